"""Every SSL method on Fashion-MNIST at one fixed CPU budget: kNN and linear-probe top-1 on frozen
features, next to a random-init encoder of the same architecture, and wall time.

For each method: a fresh encoder (``small_cnn`` width 32; ``vit_tiny`` for MAE) and the method
with its default arguments and its own optimizer (``SSLMethod.optim``, as the pipeline), trained
by ``ssl_models.engine.train`` on the 60k train images (labels unused) for a fixed number of
steps. With ``--seconds S`` (default) the step count is calibrated per method: a throwaway copy
runs 4 steps, and the run gets ``S / seconds-per-step`` steps, so each method gets about ``S``
seconds of pretraining; per-epoch work (DeepCluster's clustering of the whole pool) is timed once
and counted in, spread over an epoch's steps. ``--images N`` gives every method the same N
images instead. Epochs are ``--epoch-images`` long (DeepCluster re-clusters at each). Then, on
frozen features: kNN top-1 (k=20, cosine, T=0.07, bank = 60k train, queries = 10k test) and a
linear probe (L-BFGS softmax regression on the 60k train features, scored on test).

    .venv/bin/python bench/methods.py --bank-images 10000   # 14 methods x (240 s + eval): ~65 min on 2 cores
    .venv/bin/python bench/methods.py --seconds 20 --methods simclr byol mae
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass

import torch

from _common import build_encoder, load_average, load_fashion_mnist, setup_lines
from ssl_models.device import autocast_dtype, use_channels_last
from ssl_models.engine import TrainConfig, train
from ssl_models.evaluation import extract_features, knn_top1, linear_probe
from ssl_models.methods import METHODS
from ssl_models.methods.base import SSLMethod


@dataclass
class Scores:
    knn: float
    linear: float


@dataclass
class Row:
    method: str
    backbone: str
    optim: str
    steps: int
    images_seen: int
    train_s: float
    scores: Scores
    random_init: Scores
    final_loss: float


def backbone_for(method: str) -> str:
    backbones = METHODS[method].backbones  # MAE: a ViT
    return backbones[0] if backbones else "small_cnn"


def config_for(method: str, steps: int, args: argparse.Namespace, pool: int) -> TrainConfig:
    """``steps`` steps of ``args.batch_size`` images, in epochs of at most ``args.epoch_images``."""
    per_epoch_steps = max(1, min(args.epoch_images, pool) // args.batch_size)
    epochs = max(1, math.ceil(steps / per_epoch_steps))
    per_epoch_steps = math.ceil(steps / epochs)
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, images_per_epoch=per_epoch_steps * args.batch_size,
                       warmup_epochs=0.1 * epochs, seed=args.seed, device="cpu", compile=False,
                       checkpoint_every=10**9, **METHODS[method].optim)


def make_method(name: str, images: torch.Tensor, seed: int, stem_stride: int):
    torch.manual_seed(seed)
    return METHODS[name](build_encoder(backbone_for(name), images, 32, stem_stride))


def seconds_per_step(name: str, images: torch.Tensor, args: argparse.Namespace) -> float:
    """Median seconds of steps 2-4 of a throwaway copy (a small pool keeps DeepCluster's setup cheap),
    plus the method's per-epoch work on the whole pool, if it has any, over an epoch's steps."""
    stamps: list[float] = []
    cfg = config_for(name, 4, args, len(images))
    cfg.log_every = 1
    method = make_method(name, images, args.seed, args.stem_stride)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(method, images[: 4 * args.batch_size], cfg, progress=False,
              on_step=lambda step, _: stamps.append(time.perf_counter()), max_steps=4)
    diffs = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    step_s = diffs[len(diffs) // 2]
    if METHODS[name].on_epoch_start is not SSLMethod.on_epoch_start:
        t0 = time.perf_counter()
        method.on_epoch_start(0, images)  # on the device and in the memory format the engine chose
        steps_per_epoch = max(1, min(args.epoch_images, len(images)) // args.batch_size)
        step_s += (time.perf_counter() - t0) / steps_per_epoch
    return step_s


def evaluate(encoder: torch.nn.Module, data: dict, bank_images: int) -> Scores:
    encoder = encoder.cpu().to(memory_format=torch.contiguous_format).eval()
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    train_x, train_y = train_x[:bank_images], train_y[:bank_images]
    bank, queries = extract_features(encoder, train_x), extract_features(encoder, test_x)
    knn = knn_top1(bank, train_y, queries, test_y, 10, k=20, temperature=0.07)
    pred, _ = linear_probe(bank, train_y, queries, 10)
    return Scores(knn, (pred == test_y).float().mean().item())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="default: all 14")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=240.0, help="pretraining seconds per method (default 240)")
    budget.add_argument("--images", type=int, default=None, help="instead: pretraining images per method (same for all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (default 256)")
    p.add_argument("--epoch-images", type=int, default=10240, help="images per epoch (default 10240)")
    p.add_argument("--bank-images", type=int, default=60000,
                   help="train images whose features form the kNN bank and fit the linear probe (default: all 60000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stem-stride", type=int, default=2, choices=[1, 2],
                   help="small_cnn's first convolution stride (default 2, pretrain.stem_stride's default)")
    args = p.parse_args(argv)

    data = load_fashion_mnist()
    pool = data["train"][0]
    device = torch.device("cpu")
    print("# Every SSL method on Fashion-MNIST at a fixed CPU budget")
    for line in setup_lines(device):
        print(line)
    print(f"budget:      {f'{args.seconds:g} s of pretraining per method (calibrated steps)' if args.images is None else f'{args.images} images per method'}"
          f", batch {args.batch_size}, epochs of {args.epoch_images} images, pool = {len(pool)} train images (labels unused)")
    print(f"training:    ssl_models.engine.train, precision {autocast_dtype(device, 'auto') or 'fp32'}, channels_last "
          f"{use_channels_last(device)}, no compile; warmup 10 % + cosine; each method's own optimizer, lr and "
          f"weight decay (SSLMethod.optim, as in the pipeline) and default arguments; small_cnn stem stride {args.stem_stride}")
    print(f"eval:        frozen encoder features; kNN k=20 cosine T=0.07 and a linear probe (L-BFGS, 200 it.), "
          f"bank / probe fit on the first {min(args.bank_images, len(pool))} train images, scored on the 10k test images")
    print()

    random_init: dict[str, Scores] = {}
    rows: list[Row] = []
    for name in args.methods:
        backbone = backbone_for(name)
        if backbone not in random_init:
            random_init[backbone] = evaluate(make_method(name, pool, args.seed, args.stem_stride).encoder, data, args.bank_images)
            print(f"  random-init {backbone}: kNN {random_init[backbone].knn:.4f}, linear {random_init[backbone].linear:.4f}",
                  flush=True)
        if args.images is None:
            step_s = seconds_per_step(name, pool, args)
            steps = max(10, int(args.seconds / step_s))
        else:
            step_s, steps = float("nan"), max(1, args.images // args.batch_size)
        method = make_method(name, pool, args.seed, args.stem_stride)
        cfg = config_for(name, steps, args, len(pool))
        t0 = time.perf_counter()
        try:
            result = train(method, pool, cfg, progress=False)
        except FloatingPointError as e:  # diverged: report it and go on with the next method
            print(f"  {name:12s} diverged: {e}", flush=True)
            continue
        train_s = time.perf_counter() - t0
        scores = evaluate(method.encoder, data, args.bank_images)
        loss = result.history[-1]["loss"] if result.history else float("nan")
        optim = "{optimizer} lr {lr:g} wd {weight_decay:g}".format(**METHODS[name].optim)
        rows.append(Row(name, backbone, optim, result.steps, result.steps * args.batch_size, train_s, scores, random_init[backbone], loss))
        print(f"  {name:12s} {backbone:9s} {result.steps:4d} steps ({step_s:.2f} s/step calibrated), {train_s:5.0f} s, "
              f"kNN {scores.knn:.4f}, linear {scores.linear:.4f}, loss {loss:.3f} (load {load_average()})", flush=True)

    print()
    print("| method | backbone | optimizer | images seen | wall s | kNN | kNN random-init | linear | linear random-init |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        flag = "" if r.scores.knn > r.random_init.knn else " (not above random-init)"
        print(f"| {r.method} | {r.backbone} | {r.optim} | {r.images_seen:,} | {r.train_s:.0f} | {r.scores.knn:.4f}{flag} | "
              f"{r.random_init.knn:.4f} | {r.scores.linear:.4f} | {r.random_init.linear:.4f} |")
    print(f"\nwall s: pretraining only (evaluation excluded). load avg at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
