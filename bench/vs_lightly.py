"""sslpipe against lightly (the PyPI package): same backbone, batch size, epochs, data, optimizer
and learning-rate schedule; end-to-end training images/s (augmentation included) and kNN top-1.

Each run trains a fresh small CNN (``small_cnn``, width 32, the same ``Encoder`` class for both
libraries) for ``--epochs`` passes over a seeded ``--train-images`` subset of Fashion-MNIST train,
with SGD (nesterov, momentum 0.9, weight decay 5e-4 on weights) at lr 0.3 x batch/256, half an epoch
of linear warmup then cosine decay (``ssl_models.engine.build_optimizer`` + ``warmup_cosine`` for
both). Then kNN top-1 (k=20, cosine, T=0.07): bank = all 60k train images, queries = the 10k test
images, features extracted the same way for every run.

- sslpipe: ``ssl_models.engine.train`` with the method's batched tensor views (``ViewAugment``
  defaults) and the engine's defaults on this machine (bf16 autocast + channels_last where the
  CPU has AMX or AVX512-BF16; no torch.compile).
- lightly: ``SimCLRTransform`` (per-image PIL, settings printed, matched to sslpipe's views) in a
  standard ``torch.utils.data.DataLoader`` (``num_workers`` 0 or 1), lightly's
  ``SimCLRProjectionHead`` + ``NTXentLoss``, or ``BYOLProjectionHead`` / ``BYOLPredictionHead`` +
  ``NegativeCosineSimilarity`` + ``update_momentum`` / ``cosine_schedule``, in the loop of lightly's
  examples. Precision ``fp32`` is how lightly's examples run; ``bf16`` gives lightly the same
  autocast + channels_last as sslpipe, which isolates the cost of augmentation and data loading.

One epoch of a small subset is a few dozen steps, and the kNN top-1 after it moves by about a point
from one seed to the next (subset, order, initialization and views all change with it). With
``--seeds`` every run is repeated per seed and the table gives the mean and spread, and the mean of
the per-seed differences to lightly's fp32 run (same seed, same subset): that difference, not one
seed's, is what says whether one library learns better than the other.

    .venv/bin/python bench/vs_lightly.py                                   # ~5-10 min on 2 cores
    .venv/bin/python bench/vs_lightly.py --train-images 10000 --seeds 0 1 2 3 4 --runs sslpipe:simclr lightly:simclr:w0:fp32

Needs lightly: ``pip install -e '.[bench]' -c <(printf 'torch==2.14.1\\ntorchvision==0.29.1\\n')``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from _common import build_encoder, load_average, load_fashion_mnist, setup_lines
from ssl_models.augment import ViewAugment
from ssl_models.device import autocast, autocast_dtype, use_channels_last
from ssl_models.engine import TrainConfig, build_optimizer, train
from ssl_models.evaluation import extract_features, knn_top1
from ssl_models.methods import BYOL, SimCLR
from ssl_models.schedules import warmup_cosine

DEFAULT_RUNS = [
    "sslpipe:simclr",
    "lightly:simclr:w0:fp32",
    "lightly:simclr:w1:fp32",
    "lightly:simclr:w0:bf16",
    "sslpipe:byol",
    "lightly:byol:w0:fp32",
]
HIDDEN, OUT = 512, 128  # projection head sizes, the same as sslpipe's defaults
TEMPERATURE = 0.2  # NT-Xent temperature, sslpipe's default (params.yaml); lightly's default is 0.5


@dataclass
class Result:
    run: str
    seed: int
    images_per_s: float
    wall_s: float
    knn: float
    final_loss: float  # mean over the last epoch's steps


def lightly_transform_kwargs(size: int) -> dict:
    """SimCLRTransform settings matched to sslpipe's ViewAugment defaults for 28x28 grayscale."""
    aug = ViewAugment()
    return dict(
        input_size=size,
        cj_prob=aug.jitter_p,
        cj_strength=aug.jitter_strength,  # x (0.8, 0.8, 0.8, 0.2), as sslpipe's jitter
        min_scale=aug.crop_scale[0],  # lightly's default 0.08 is too small a crop of a 28x28 image
        random_gray_scale=aug.grayscale_p,  # a no-op on grayscale, as in sslpipe
        gaussian_blur=aug.blur_p,  # lightly's default 0.5; off in sslpipe's defaults
        hf_prob=aug.flip_p,
        normalize=None,  # the Encoder normalizes with the pool's mean/std, as in sslpipe
    )


class PILPairs(torch.utils.data.Dataset):
    """uint8 (N, 1, H, W) images as PIL 'L' images through a per-image transform (the usual setup)."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images = images[:, 0].numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L"))


class LightlySimCLR(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = encoder
        self.projection_head = SimCLRProjectionHead(encoder.out_dim, HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class LightlyBYOL(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = encoder
        self.projection_head = BYOLProjectionHead(encoder.out_dim, HIDDEN, OUT)
        self.prediction_head = BYOLPredictionHead(OUT, HIDDEN, OUT)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def cfg_for(args: argparse.Namespace, seed: int) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed, compile=False, device="cpu")


def run_sslpipe(method_name: str, images: torch.Tensor, args: argparse.Namespace,
                seed: int) -> tuple[nn.Module, float, float]:
    """Train with the engine; returns the encoder, wall seconds and the last epoch's mean loss."""
    torch.manual_seed(seed)
    encoder = build_encoder("small_cnn", images, 32)
    if method_name == "simclr":
        method = SimCLR(encoder, hidden_dim=HIDDEN, out_dim=OUT, temperature=TEMPERATURE)
    else:
        method = BYOL(encoder, hidden_dim=HIDDEN, out_dim=OUT, momentum_base=0.996)  # as the lightly loop below
    t0 = time.perf_counter()
    result = train(method, images, cfg_for(args, seed), progress=False)
    wall = time.perf_counter() - t0
    return method.encoder, wall, result.history[-1]["loss"]


def run_lightly(method_name: str, workers: int, precision: str, images: torch.Tensor,
                args: argparse.Namespace, seed: int) -> tuple[nn.Module, float, float]:
    """Train in the loop of lightly's examples; returns the encoder, wall seconds and the last
    epoch's mean loss (as the engine reports it)."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.utils import update_momentum
    from lightly.transforms import SimCLRTransform
    from lightly.utils.scheduler import cosine_schedule

    torch.manual_seed(seed)
    device = torch.device("cpu")
    encoder = build_encoder("small_cnn", images, 32)
    model = LightlySimCLR(encoder) if method_name == "simclr" else LightlyBYOL(encoder)
    criterion = NTXentLoss(temperature=TEMPERATURE) if method_name == "simclr" else NegativeCosineSimilarity()
    dtype = autocast_dtype(device, "bf16") if precision == "bf16" else None
    channels_last = precision == "bf16" and use_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = cfg_for(args, seed)
    optimizer = build_optimizer(model, cfg)
    loader = torch.utils.data.DataLoader(
        PILPairs(images, SimCLRTransform(**lightly_transform_kwargs(images.shape[-1]))),
        batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = cfg.lr * cfg.batch_size / 256
    step, losses = 0, []
    model.train()
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        losses.clear()
        for x0, x1 in loader:
            if channels_last:
                x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, peak_lr)
            if method_name == "simclr":
                with autocast(device, dtype):
                    z0, z1 = model(x0), model(x1)
                loss = criterion(z0.float(), z1.float())  # the loss in fp32, as sslpipe does
            else:
                m = cosine_schedule(step, total, 0.996, 1)
                update_momentum(model.backbone, model.backbone_momentum, m=m)
                update_momentum(model.projection_head, model.projection_head_momentum, m=m)
                with autocast(device, dtype):
                    p0, p1 = model(x0), model(x1)
                    z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
                loss = 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
    wall = time.perf_counter() - t0
    return model.backbone, wall, sum(losses) / len(losses)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std; just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-images", type=int, default=20000, help="Fashion-MNIST train images to pretrain on (default 20000)")
    p.add_argument("--epochs", type=int, default=1, help="passes over them (default 1)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default 256)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="subset, order, initialization and view seeds; every run is repeated per seed (default: 0)")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                   help="sslpipe:<simclr|byol> or lightly:<simclr|byol>:w<num_workers>:<fp32|bf16> (default: "
                   + " ".join(DEFAULT_RUNS) + ")")
    p.add_argument("--random-init", action="store_true", help="also report kNN of an untrained encoder (per seed)")
    args = p.parse_args(argv)
    for run in args.runs:
        parts = run.split(":")
        if not ((parts[0] == "sslpipe" and len(parts) == 2 and parts[1] in ("simclr", "byol"))
                or (parts[0] == "lightly" and len(parts) == 4 and parts[1] in ("simclr", "byol")
                    and parts[2].startswith("w") and parts[2][1:].isdigit() and parts[3] in ("fp32", "bf16"))):
            print(f"error: cannot read run {run!r}; expected sslpipe:<simclr|byol> or "
                  "lightly:<simclr|byol>:w<num_workers>:<fp32|bf16>", file=sys.stderr)
            return 2

    try:
        import lightly
    except ImportError:
        print("SKIPPED: lightly is not installed. Install it without touching torch:\n"
              "  .venv/bin/pip install -e '.[bench]' -c <(printf 'torch==2.14.1\\ntorchvision==0.29.1\\n')")
        return 0

    data = load_fashion_mnist()
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    n_subset = min(args.train_images, len(train_x))

    device = torch.device("cpu")
    print("# sslpipe vs lightly: end-to-end SSL training on Fashion-MNIST")
    for line in setup_lines(device):
        print(line)
    print(f"lightly:     {lightly.__version__}")
    print(f"data:        {n_subset} of {len(train_x)} Fashion-MNIST train images (a subset per seed), "
          f"{args.epochs} epoch(s), batch {args.batch_size} ({n_subset // args.batch_size} steps/epoch, last partial batch dropped)")
    print(f"seeds:       {' '.join(map(str, args.seeds))} (subset, order, initialization and views; every run once per seed)")
    cfg = cfg_for(args, args.seeds[0])
    print(f"model:       small_cnn width 32 + heads {HIDDEN}-{OUT}; SimCLR NT-Xent T={TEMPERATURE}; BYOL momentum 0.996 -> 1 cosine")
    print(f"optimizer:   SGD nesterov m={cfg.momentum}, lr {cfg.lr} x batch/256, wd {cfg.weight_decay} (weights only), "
          f"warmup {cfg.warmup_epochs} epoch + cosine, for both libraries")
    print(f"sslpipe:     engine defaults here: precision {autocast_dtype(device, 'auto') or 'fp32'}, "
          f"channels_last {use_channels_last(device)}, no compile; views {ViewAugment()}")
    print(f"lightly:     SimCLRTransform({', '.join(f'{k}={v}' for k, v in lightly_transform_kwargs(train_x.shape[-1]).items())}) "
          "(other arguments: lightly defaults), PIL 'L' images, DataLoader shuffle, drop_last")
    print("eval:        kNN top-1, k=20, cosine, T=0.07; bank = 60000 train features, queries = 10000 test; bf16 feature extraction")
    print("loss:        mean over the last epoch's steps, for both libraries")
    print()

    def knn_of(encoder: nn.Module) -> float:
        encoder = encoder.to(memory_format=torch.contiguous_format)
        bank = extract_features(encoder, train_x)
        queries = extract_features(encoder, test_x)
        return knn_top1(bank, train_y, queries, test_y, 10, k=20, temperature=0.07)

    results: list[Result] = []
    random_init: list[float] = []
    n_seen = n_subset // args.batch_size * args.batch_size * args.epochs
    for seed in args.seeds:
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:n_subset]
        subset = train_x[pick].contiguous()
        for run in args.runs:
            parts = run.split(":")
            print(f"  seed {seed} {run} ... (load {load_average()})", end=" ", flush=True)
            if parts[0] == "sslpipe":
                encoder, wall, loss = run_sslpipe(parts[1], subset, args, seed)
            else:
                encoder, wall, loss = run_lightly(parts[1], int(parts[2][1:]), parts[3], subset, args, seed)
            knn = knn_of(encoder)
            results.append(Result(run, seed, n_seen / wall, wall, knn, loss))
            print(f"{n_seen / wall:,.0f} images/s, {wall:.0f} s, kNN {knn:.4f}", flush=True)
        if args.random_init:
            torch.manual_seed(seed)
            random_init.append(knn_of(build_encoder("small_cnn", subset, 32)))
            print(f"  seed {seed} random-init small_cnn kNN: {random_init[-1]:.4f}")

    def reference(run: str, seed: int) -> Result | None:
        """lightly's fp32, num_workers=0 run of the same method and seed (how lightly's examples run)."""
        ref = f"lightly:{run.split(':')[1]}:w0:fp32"
        return next((r for r in results if r.run == ref and r.seed == seed), None)

    print()
    print("| run | images/s (end to end, median) | wall s (median) | kNN top-1 (mean ± std) | kNN per seed | "
          "loss | images/s vs lightly fp32 w0 | kNN vs lightly fp32 w0 (points) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for run in args.runs:
        rows = [r for r in results if r.run == run]
        pairs = [(r, ref) for r in rows if (ref := reference(run, r.seed)) is not None]
        speed = statistics.median(r.images_per_s / ref.images_per_s for r, ref in pairs) if pairs else None
        diff = [100 * (r.knn - ref.knn) for r, ref in pairs]
        diff_text = "-"
        if pairs and not run.endswith(":w0:fp32"):
            diff_text = f"{statistics.mean(diff):+.2f}" + (f" ± {statistics.stdev(diff):.2f}" if len(diff) > 1 else "")
        print(f"| {run} | {statistics.median(r.images_per_s for r in rows):,.0f} | "
              f"{statistics.median(r.wall_s for r in rows):.0f} | {mean_std([r.knn for r in rows])} | "
              f"{' '.join(f'{r.knn:.4f}' for r in rows)} | {statistics.mean(r.final_loss for r in rows):.3f} | "
              f"{f'{speed:.2f}x' if speed else '-'} | {diff_text} |")
    if random_init:
        print(f"\nrandom-init small_cnn kNN: {mean_std(random_init)}")
    print("\nimages/s vs lightly: median over seeds of the per-seed ratio; kNN vs lightly: mean ± std over seeds "
          "of the per-seed difference (same subset and seed on both sides)")
    print(f"load avg at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
