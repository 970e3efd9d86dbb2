"""Shared bits of the benchmarks: the machine's description, the matmul ceiling, data and encoders."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from ssl_models.augment import to_float
from ssl_models.backbones import Encoder, build_backbone

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``unknown`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def setup_lines(device: torch.device) -> list[str]:
    """What the figures depend on: versions, threads, CPU/GPU, load at the start."""
    lines = [
        f"date:        {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"torch:       {torch.__version__}",
        f"threads:     {torch.get_num_threads()} (os.cpu_count {os.cpu_count()})",
        f"cpu:         {cpu_model()}",
        f"load avg:    {load_average()} (1/5/15 min, at start)",
    ]
    if device.type == "cuda":
        lines.append(f"gpu:         {torch.cuda.get_device_name(device)}")
    return lines


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 1.5) -> float:
    """Best-of-runs GFLOP/s of an ``n x n`` matmul in ``dtype``: the practical compute ceiling.

    Args:
        dtype: torch.float32 or torch.bfloat16 (what the step computes its convolutions in).
        device: where to measure.
        n: matrix side.
        seconds: measuring time (after one warm-up product).
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: oneDNN/cuBLAS kernel selection
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 1 if device.type == "cpu" else 20
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def pool_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] (first 10k, as pretrain does)."""
    x = to_float(images[:10000])
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()


def build_encoder(backbone: str, images: torch.Tensor, width: int = 32) -> Encoder:
    """A fresh encoder for ``images`` (uint8 (N, C, H, W)), normalized with their statistics."""
    mean, std = pool_stats(images)
    return Encoder(build_backbone(backbone, int(images.shape[1]), width), mean, std)


def load_fashion_mnist() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST as uint8 (N, 1, 28, 28) tensors and int64 labels, from the IDX files."""
    from ssl_models.data import read_fashion_mnist

    data = read_fashion_mnist(FASHION_MNIST_DIR)
    return {k: (torch.from_numpy(x), torch.from_numpy(y).long()) for k, (x, y) in data.items()}
