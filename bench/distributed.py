"""Pretraining throughput on Ray Train workers against today's single process.

Three runs of the same SimCLR pretraining (the pretrain stage's method, engine and config: a
seeded subset of Fashion-MNIST train, global batch ``--batch-size``, checkpoints at epoch ends),
each worker or process on ``--threads`` torch threads:

- **1 process**: ``ssl_models.engine.train`` in this process, as the stage runs with
  ``pretrain.distributed.workers: 1`` (no Ray);
- **Ray Train, 1 worker**: the distributed path itself (``tasks.distributed.train_on_workers``:
  a ``TorchTrainer`` worker, checkpoints reported to Ray Train), to show its overhead;
- **Ray Train, N workers**: DDP over gloo, batch / N per worker, SyncBatchNorm, gathered loss.

For each it prints images/s of the training loop (the engine's own figure: steps x global batch /
the loop's wall time, epoch-end checkpoints included, measured in rank 0), the same against the
single process, the scaling efficiency (N-worker images/s over N x the 1-worker images/s), and the
wall time of the whole call (Ray Train's controller and worker start-up, shipping the images and
restoring nothing included). A shared Ray instance is started first; its start-up is printed apart.

    .venv/bin/python bench/distributed.py                          # 4096 images, batch 256, 2 epochs
    .venv/bin/python bench/distributed.py --images 2048 --epochs 1 # smaller
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from _common import load_average, load_fashion_mnist, setup_lines

from ssl_models.engine import pretrain_schedule, train
from tasks.config import DistributedParams, PretrainParams
from tasks.distributed import train_on_workers
from tasks.pretrain import _worker_method, train_config


@dataclass
class Row:
    path: str
    workers: int
    images_per_s: float
    wall_s: float


def pretrain_params(args: argparse.Namespace, workers: int) -> PretrainParams:
    return PretrainParams(method="simclr", backbone="small_cnn", width=args.width, epochs=args.epochs,
                          batch_size=args.batch_size, precision=args.precision, channels_last=None, compile=False,
                          device="cpu", checkpoint_every=10**9, knn_monitor_images=0, seed=0,
                          distributed=DistributedParams(workers=workers, resources_per_worker={"CPU": args.threads}))


def one_process(args: argparse.Namespace, images: torch.Tensor, ckpt_dir: str) -> Row:
    """Today's path: the engine in this process (what the stage calls at ``workers: 1``)."""
    cfg = pretrain_params(args, 1)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = train(_worker_method(cfg, images), images, train_config(cfg), f"{ckpt_dir}/single.pt", progress=False)
    return Row("1 process (no Ray)", 1, result.images_per_sec, time.perf_counter() - t0)


def on_workers(args: argparse.Namespace, images: torch.Tensor, workers: int, storage: str) -> Row:
    """The Ray Train path on ``workers`` workers."""
    cfg = pretrain_params(args, workers)
    dist_cfg = cfg.distributed.model_copy(update={"storage_path": storage})
    t0 = time.perf_counter()
    run = train_on_workers(functools.partial(_worker_method, cfg), images, train_config(cfg), dist_cfg,
                           name=f"bench-{workers}", progress=False)
    return Row(f"Ray Train, {workers} worker{'s' if workers > 1 else ''}", workers, run.result.images_per_sec,
               time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096, help="train images (a seeded subset; default 4096)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch, split over the workers (default 256)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    p.add_argument("--width", type=int, default=32, help="small_cnn width (default 32, the stage's)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="as pretrain.precision (default auto: bf16 where the CPU has it)")
    p.add_argument("--workers", type=int, default=2, help="workers of the multi-worker run (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker and for the process (default 1)")
    args = p.parse_args(argv)
    if args.batch_size % args.workers:
        print(f"error: --batch-size {args.batch_size} does not split over --workers {args.workers}", file=sys.stderr)
        return 2

    import ray

    data = load_fashion_mnist()["train"][0]
    images = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.images]].contiguous()
    sched = pretrain_schedule(images.shape[0], train_config(pretrain_params(args, 1)))
    print("# Pretraining on Ray Train workers vs one process")
    for line in setup_lines(torch.device("cpu")):
        print(line)
    print("machine:     shared (other jobs may run: compare rows of one run, as ratios)")
    print(f"model:       SimCLR, small_cnn width {args.width}, 1x28x28, precision {args.precision}, no compile")
    print(f"data:        {images.shape[0]} Fashion-MNIST train images, {args.epochs} epochs = {sched.total_steps} steps")
    print(f"batch:       {args.batch_size} global ({args.batch_size // args.workers} per worker at {args.workers} workers)")
    print(f"threads:     {args.threads} per worker / process; checkpoints at epoch ends")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers * args.threads, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    print(f"ray.init:    {time.perf_counter() - t0:.1f} s (ray {ray.__version__}, local, {args.workers * args.threads} CPUs)")
    print()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
            for run in (lambda: one_process(args, images, tmp), lambda: on_workers(args, images, 1, tmp),
                        lambda: on_workers(args, images, args.workers, tmp)):
                rows.append(run())
                print(f"  measured {rows[-1].path}: {rows[-1].images_per_s:,.0f} images/s", flush=True)
    finally:
        ray.shutdown()

    single, one_worker = rows[0].images_per_s, rows[1].images_per_s
    print()
    print("| path | workers | images/s (training loop) | vs 1 process | scaling efficiency | wall s (whole call) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        efficiency = r.images_per_s / (r.workers * one_worker) if r.workers > 1 else None
        print(f"| {r.path} | {r.workers} | {r.images_per_s:,.0f} | {r.images_per_s / single:.2f}x | "
              f"{'' if efficiency is None else f'{100 * efficiency:.0f} %'} | {r.wall_s:.1f} |")
    print(f"\nload avg at end: {load_average()}")
    print(f"overhead of the distributed path at 1 worker: {100 * (1 - one_worker / single):.0f} % of the single "
          f"process's images/s; scaling efficiency = {args.workers}-worker images/s / ({args.workers} x 1-worker images/s)")
    return 0



if __name__ == "__main__":
    sys.exit(main())
