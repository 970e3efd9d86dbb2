"""What the semi-supervised trainers (``ssl_models.fixmatch``, ``ssl_models.distill``) share: an
endless, seeded stream of unlabeled indices, per-step metrics summed on the device, a forward that
leaves BatchNorm's running statistics alone, and the epoch loop of a labeled batch plus ``mu``
times as many unlabeled images per step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssl_models.classifier import Classifier, FinetuneConfig, set_step_lr, start_epoch
from ssl_models.training import LossMeter, Runtime, Schedule, Throughput

# (labeled indices (B,), unlabeled indices (mu*B,)) -> (the step's detached loss, its metrics)
SemiStep = Callable[[Tensor, Tensor], tuple[Tensor, Sequence[Tensor]]]


class IndexStream:
    """Endless batches of indices into a pool of ``n`` images: one seeded random permutation after
    another, so that every image is used once before any is used again.

    Args:
        n: the pool's size.
        generator: the CPU generator of the permutations.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        if n <= 0:
            raise ValueError("the unlabeled pool is empty; pass at least one unlabeled image")
        self.n, self.generator = n, generator
        self.order, self.pos = torch.randperm(n, generator=generator), 0

    def take(self, k: int) -> Tensor:
        """The next ``k`` indices, (k,) int64 (drawing new permutations as the pool runs out)."""
        parts = []
        while k > 0:
            if self.pos == self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
            part = self.order[self.pos : self.pos + k]
            self.pos += len(part)
            k -= len(part)
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class MetricSums:
    """Per-step scalar metrics summed on the device; ``read`` returns their means in one transfer.

    Args:
        names: the metrics, in the order ``add`` gets them.
        device: where the metrics are.
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.names = list(names)
        self.total = torch.zeros(len(self.names), dtype=dtype, device=device)
        self.count = 0

    def add(self, values: Sequence[Tensor]) -> None:
        """Add one step's scalars (no synchronisation)."""
        self.total += torch.stack([v.detach().to(self.total.dtype) for v in values])
        self.count += 1

    def read(self) -> dict[str, float]:
        """The means since construction (nan before any step)."""
        means = (self.total / self.count).tolist() if self.count else [float("nan")] * len(self.names)
        return dict(zip(self.names, means, strict=True))


@dataclass
class SemiRandom:
    """The seeded randomness of a semi-supervised run: the labeled order and crops as
    ``train_classifier`` draws them (``seed``), the unlabeled stream and its views (``seed + 1``)."""

    order: torch.Generator  # the labeled order (CPU)
    crop: torch.Generator  # the labeled batch's weak views (on the device)
    stream: IndexStream  # the unlabeled indices
    unlabeled: torch.Generator  # the unlabeled batch's views (on the device)


def semi_random(device: torch.device, n_unlabeled: int, seed: int) -> SemiRandom:
    return SemiRandom(torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed),
                      IndexStream(n_unlabeled, torch.Generator().manual_seed(seed + 1)),
                      torch.Generator(device=device).manual_seed(seed + 1))


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``model`` keep normalizing with the batch's statistics in train mode, but
    their running statistics are restored on exit (a forward that must not count in them: USB's
    ``bn_controller.freeze_bn``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, v in m.named_buffers(recurse=False):
                    v.copy_(buffers[k])


def semi_epoch(rt: Runtime, model: Classifier, cfg: FinetuneConfig, sched: Schedule, epoch: int, n_labeled: int,
               mu: int, order_gen: torch.Generator, stream: IndexStream, step: SemiStep,
               names: Sequence[str], labeled_used: bool = True) -> dict[str, float]:
    """One epoch (1-based) over the labeled images: ``sched.steps_per_epoch`` steps, each of a
    labeled batch of ``sched.batch`` and the stream's next ``mu * sched.batch`` unlabeled images.

    Args:
        n_labeled: the labeled set's size (its order is drawn from ``order_gen``, as in
            ``classifier.train_epoch``).
        step: does the augmentation and the ``training.train_step`` of one step.
        names: the names of the metrics ``step`` returns.
        labeled_used: whether ``step`` uses the labeled batch (else only the unlabeled images count
            in ``images_per_sec``).

    Returns:
        ``epoch``, ``train_loss``, the mean of every metric in ``names`` and ``images_per_sec``
        (the images a step uses, each counted once); read back once.
    """
    start_epoch(model, cfg, epoch)
    order = torch.randperm(n_labeled, generator=order_gen)
    meter, sums, clock = LossMeter(rt.device), MetricSums(names, rt.device), Throughput()
    for i in range(sched.steps_per_epoch):
        global_step = (epoch - 1) * sched.steps_per_epoch + i
        idx_l = order[i * sched.batch : (i + 1) * sched.batch]  # (B,)
        idx_u = stream.take(mu * sched.batch)  # (mu*B,)
        set_step_lr(rt.optimizer, sched, cfg, global_step)
        loss, metrics = step(idx_l, idx_u)
        meter.add(loss, global_step)
        sums.add(metrics)
        clock.add(len(idx_u) + (len(idx_l) if labeled_used else 0))
    record: dict[str, float] = {"epoch": epoch, "train_loss": meter.read().mean, **sums.read()}
    record["images_per_sec"] = clock.rate()  # after the read-backs: the device is in sync
    return record
