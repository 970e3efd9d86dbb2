"""Every SSL method trains the same across workers: 2 workers each with half of a batch give the
loss and the (DDP-averaged) gradients of 1 process with the whole batch, on the same views.

One pair of worker processes (a gloo process group on loopback) runs every method in turn; the
parent computes the one-process reference meanwhile. Each run takes two optimizer steps with
``on_step_end`` between them, so queues, centers, momentum encoders and BatchNorm running
statistics are compared too (the final state_dicts). The workers synchronise BatchNorm
(``ssl_models.dist.convert_sync_batchnorm``) and average gradients as DDP does (all-reduce, divide
by the world size); the views are computed from the whole batch in every process and split by
rank, each tensor along dim 0 (multi-crop lists per crop).

This file is also the workers' program: ``python test_distributed.py RANK WORLD INIT_FILE OUT``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_models import dist
from ssl_models.backbones import Encoder, SmallCNN, VisionTransformer
from ssl_models.methods import METHODS, SSLMethod

WORLD = 2
BATCH = 16  # the global batch; each worker takes BATCH / WORLD
STEPS = 2
ROOT = Path(__file__).resolve().parents[2]
# small heads: the test is about what each loss sees, not capacity
SMALL_ARGS: dict[str, dict] = {
    "simclr": {"hidden_dim": 32, "out_dim": 16},
    "moco": {"hidden_dim": 32, "out_dim": 16, "queue_size": 24, "momentum": 0.9},  # wraps at step 2
    "byol": {"hidden_dim": 32, "out_dim": 16},
    "simsiam": {"hidden_dim": 32, "out_dim": 32, "pred_hidden_dim": 8},
    "dino": {"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 32, "local_crops": 2},
    "barlowtwins": {"hidden_dim": 32, "out_dim": 32},
    "vicreg": {"hidden_dim": 32, "out_dim": 32},
    "swav": {"hidden_dim": 32, "out_dim": 16, "n_prototypes": 8, "local_crops": 2},
    "deepcluster": {"n_clusters": 4, "hidden_dim": 32, "out_dim": 16},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "dae": {"decoder_width": 16},
    "inpainting": {"decoder_width": 16},
    "rotation": {"hidden_dim": 32},
    "jigsaw": {"hidden_dim": 32},
}


def pool_images() -> torch.Tensor:
    """STEPS batches of smooth-ish 16 x 16 RGB images (upsampled noise: crops carry structure)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(STEPS * BATCH, 3, 4, 4, generator=g)
    return (F.interpolate(low, size=16, mode="bilinear", align_corners=False) * 255).to(torch.uint8)


def build(name: str) -> SSLMethod:
    torch.manual_seed(0)
    if name == "mae":
        backbone = VisionTransformer(3, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    else:
        backbone = SmallCNN(3, width=4)
    return METHODS[name](Encoder(backbone, [0.5] * 3, [0.25] * 3), **SMALL_ARGS[name])


def run(name: str, rank: int, world: int) -> dict:
    """Two steps of ``name`` as worker ``rank`` of ``world`` (1: the one-process reference).

    Returns:
        per step the loss (mean over workers) and the averaged gradients, and the final state_dict.
    """
    method = build(name)
    if world > 1:
        method = dist.convert_sync_batchnorm(method)
    pool = pool_images()
    method.on_epoch_start(0, pool)
    params = {k: p for k, p in method.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9)
    losses, grads = [], []
    for step in range(STEPS):
        with torch.no_grad():
            views = method.views(pool[step * BATCH : (step + 1) * BATCH], torch.Generator().manual_seed(step))
        views = [v.chunk(world)[rank] for v in views]  # this worker's half of every view
        loss = method(views).loss
        opt.zero_grad(set_to_none=False)
        loss.backward()
        # what DDP does after backward (in one bucket): the mean of every worker's gradients
        flat = dist.all_reduce_mean(torch.cat([p.grad.flatten() for p in params.values()]))
        for p, g in zip(params.values(), flat.split([p.numel() for p in params.values()]), strict=True):
            p.grad.copy_(g.view_as(p))
        losses.append(dist.all_reduce_mean(loss.detach()))
        grads.append({k: p.grad.clone() for k, p in params.items()})
        opt.step()
        method.on_step_end(step, 10)
    return {"loss": losses, "grads": grads, "state": {k: v.clone() for k, v in method.state_dict().items()}}


def worker_main(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    results: dict[str, dict | str] = {}
    try:
        for name in sorted(METHODS):
            try:
                start = time.perf_counter()
                results[name] = run(name, rank, world)
                print(f"{name}: {time.perf_counter() - start:.2f} s", flush=True)
            except Exception:  # noqa: BLE001 - reported by the parent, per method
                results[name] = traceback.format_exc()
    finally:
        torch.distributed.destroy_process_group()
    torch.save(results, f"{out}.tmp")
    os.replace(f"{out}.tmp", out)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """(the one-process reference per method, each worker's results per method). The workers run
    while the parent computes the reference; they are killed if anything fails."""
    tmp = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    outs = [tmp / f"rank{r}.pt" for r in range(WORLD)]
    logs = [open(tmp / f"rank{r}.log", "w") for r in range(WORLD)]  # noqa: SIM115 - closed in finally
    procs = [
        subprocess.Popen([sys.executable, __file__, str(r), str(WORLD), str(tmp / "init"), str(outs[r])],
                         cwd=ROOT, env=env, stdout=logs[r], stderr=subprocess.STDOUT)
        for r in range(WORLD)
    ]
    try:
        reference = {name: run(name, 0, 1) for name in sorted(METHODS)}
        for r, proc in enumerate(procs):
            rc = proc.wait(timeout=300)
            assert rc == 0, f"worker {r} exited {rc}:\n{(tmp / f'rank{r}.log').read_text()[-3000:]}"
        return reference, [torch.load(out, weights_only=False) for out in outs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def assert_close_tensors(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str) -> None:
    """Per tensor, within fp32 tolerance relative to the largest entry of all ``ref``'s tensors (a
    gradient close to 0 in one tensor is compared on the scale of the others)."""
    assert got.keys() == ref.keys(), what
    scale = max(float(t.abs().max()) for t in ref.values() if t.is_floating_point() and t.numel())
    for key, r in ref.items():
        if r.is_floating_point():
            torch.testing.assert_close(got[key], r, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, key=key: f"{what} {key}: {m}")
        else:
            assert torch.equal(got[key], r), f"{what} {key}: {got[key]} != {r}"


def test_sync_batchnorm_is_batchnorm_in_one_process() -> None:
    """Outside a process group the converted layers are BatchNorm: same outputs, same running
    statistics, same parameters (shared, not copied), in train and eval mode."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=None), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 14 * 14, 8), torch.nn.BatchNorm1d(8, affine=False))
    plain = copy.deepcopy(net)
    synced = dist.convert_sync_batchnorm(net)
    assert isinstance(synced[1], dist.SyncBatchNorm) and isinstance(synced[4], dist.SyncBatchNorm)
    assert synced[1].weight is net[1].weight and synced[1].momentum is None
    x = torch.rand(6, 3, 16, 16)
    for train in (True, True, False):
        plain.train(train)
        synced.train(train)
        torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.state_dict(), plain.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_workers_train_as_one_process(results: tuple[dict, list[dict]], name: str) -> None:
    reference, workers = results
    ref = reference[name]
    for r, worker in enumerate(workers):
        got = worker[name]
        assert isinstance(got, dict), f"worker {r} failed on {name}:\n{got}"
        for step in range(STEPS):
            torch.testing.assert_close(got["loss"][step], ref["loss"][step], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, step=step: f"step {step} loss: {m}")
            assert_close_tensors(got["grads"][step], ref["grads"][step], f"worker {r} step {step} gradient")
        assert_close_tensors(got["state"], ref["state"], f"worker {r} final state")


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
