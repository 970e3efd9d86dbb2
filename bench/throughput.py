"""Throughput of one SimCLR training step and the share of the machine's compute it uses.

A step is what the engine does per batch: batched views on the device -> forward -> NT-Xent ->
backward -> SGD step. For each precision (fp32; bf16 autocast + channels_last), eager and
optionally torch.compile'd, it prints views/s, the step's FLOPs (counted with
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls, forward + backward), the
achieved GFLOP/s, and that as a share of an ``n x n`` matmul's GFLOP/s at the same precision:
one product is timed after every timed step, and the share compares the median step with the
median product, so both see the same machine (this one's speed drifts by up to 2x over minutes).

    .venv/bin/python bench/throughput.py                       # CPU, small CNN, 28x28
    .venv/bin/python bench/throughput.py --compile             # + torch.compile rows (~1 min to compile each)
    .venv/bin/python bench/throughput.py --device cuda --backbone resnet18 --image-size 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import MatmulProbe, build_encoder, load_average, setup_lines, sync
from ssl_models.device import autocast
from ssl_models.engine import TrainConfig, build_optimizer
from ssl_models.methods import SimCLR

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class Row:
    precision: str
    channels_last: bool
    compiled: bool
    views_per_s: float
    best_views_per_s: float
    step_ms: float
    gflop_per_step: float
    gflops: float
    ceiling_gflops: float  # median of the matmul samples
    best_ceiling_gflops: float
    first_step_s: float

    @property
    def share(self) -> float:
        return self.gflops / self.ceiling_gflops


def make_step(method: SimCLR, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
              dtype: torch.dtype | None, channels_last: bool):
    """One training step on a uint8 batch, as ``ssl_models.engine.train`` does it."""
    generator = torch.Generator(device=device).manual_seed(0)

    def step(batch: torch.Tensor) -> float:
        with torch.no_grad():
            views = method.views(batch, generator)
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with autocast(device, dtype):
            loss = model(views).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def count_step_flops(method: SimCLR, batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
                     channels_last: bool) -> float:
    """FLOPs of forward + backward of one step (eager; augmentation and the optimizer not counted)."""
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        views = method.views(batch, generator)
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, dtype):
            loss = method(views).loss
        loss.backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(args: argparse.Namespace, device: torch.device, precision: str, compiled: bool, matmul_n: int) -> Row:
    dtype = PRECISIONS[precision]
    channels_last = dtype is not None and not args.no_channels_last
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, args.channels, args.image_size, args.image_size), dtype=torch.uint8)
    method = SimCLR(build_encoder(args.backbone, images, args.width, args.stem_stride)).to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.train()
    batch = images.to(device)
    flops = count_step_flops(method, batch, device, dtype, channels_last)

    model = torch.compile(method) if compiled else method
    optimizer = build_optimizer(method, TrainConfig(lr=0.03))
    step = make_step(method, model, optimizer, device, dtype, channels_last)
    sync(device)
    t0 = time.perf_counter()
    step(batch)  # the first step: compilation, kernel selection, allocator warm-up
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        step(batch)
    probe = MatmulProbe(dtype or torch.float32, device, matmul_n)
    times: list[float] = []
    deadline = time.perf_counter() + args.seconds
    while len(times) < args.min_steps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - t0)
        probe.sample()  # the ceiling, interleaved with the steps
    step_s = statistics.median(times)
    views = 2 * args.batch_size
    return Row(precision, channels_last, compiled, views / step_s, views / min(times), 1e3 * step_s, flops / 1e9,
               flops / step_s / 1e9, probe.median, max(probe.samples), first)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--backbone", default="small_cnn", help="small_cnn (default), resnet18 or vit_tiny")
    p.add_argument("--width", type=int, default=32, help="small_cnn first-stage width (default 32)")
    p.add_argument("--stem-stride", type=int, default=2, choices=[1, 2],
                   help="small_cnn's first convolution stride (default 2, pretrain.stem_stride's default)")
    p.add_argument("--image-size", type=int, default=28, help="image side (default 28, Fashion-MNIST)")
    p.add_argument("--channels", type=int, default=None, help="image channels (default: 1, or 3 for resnet18)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step; each gives 2 views (default 256)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS),
                   help="precisions to measure (default: fp32 bf16); bf16 is autocast, + channels_last")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW for the bf16 rows too")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd steps (slow to compile on CPU)")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per row (default 6)")
    p.add_argument("--min-steps", type=int, default=5, help="at least this many timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one (default 2)")
    p.add_argument("--matmul-size", type=int, default=None, help="ceiling matmul side (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.channels = args.channels or (3 if args.backbone == "resnet18" else 1)
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)

    print("# SimCLR training-step throughput")
    for line in setup_lines(device):
        print(line)
    print(f"device:      {device}")
    print(f"model:       SimCLR, {args.backbone}" + (f" width {args.width}, stem stride {args.stem_stride}" if args.backbone == "small_cnn" else "")
          + f", {args.channels}x{args.image_size}x{args.image_size}, head 512-128, NT-Xent T=0.2, SGD nesterov")
    print(f"batch:       {args.batch_size} images = {2 * args.batch_size} views per step (default ViewAugment views)")
    print(f"compile:     {'eager and torch.compile' if args.compile else 'eager only (--compile adds compiled rows)'}")
    print(f"timing:      median step over >= {args.seconds:g} s / {args.min_steps} steps after {1 + args.warmup} warm-up steps")

    print(f"ceiling:     {n}x{n} matmul GFLOP/s at the row's precision, one product timed after each timed step;")
    print("             share = median step GFLOP/s / median matmul GFLOP/s")
    print()

    rows = []
    for compiled in ([False, True] if args.compile else [False]):
        for precision in args.precision:
            row = measure(args, device, precision, compiled, n)
            rows.append(row)
            print(f"  measured {precision}{' compiled' if compiled else ''}: {row.views_per_s:,.0f} views/s", flush=True)

    print()
    print("| precision | channels_last | compile | views/s (median step) | views/s (best step) | step ms | GFLOP/step | GFLOP/s | matmul GFLOP/s (median / best) | share of ceiling | first step s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.precision} | {'yes' if r.channels_last else 'no'} | {'yes' if r.compiled else 'no'} | "
              f"{r.views_per_s:,.0f} | {r.best_views_per_s:,.0f} | {r.step_ms:.0f} | {r.gflop_per_step:.1f} | {r.gflops:.0f} | "
              f"{r.ceiling_gflops:.0f} / {r.best_ceiling_gflops:.0f} | {100 * r.share:.0f} % | {r.first_step_s:.1f} |")
    print(f"\nload avg at end: {load_average()}")
    print("FLOPs: conv + matmul, forward + backward (FlopCounterMode); views, BatchNorm, ReLU and the "
          "optimizer are not counted but are in the step time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
