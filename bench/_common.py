"""Shared bits of the benchmarks: the machine's description, the matmul ceiling, data and encoders."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ssl_models.augment import to_float
from ssl_models.backbones import Encoder, build_backbone

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def cpu_model() -> str:
    """The CPU's model name, family/model numbers and bf16 hardware from /proc/cpuinfo, e.g.
    ``AMD EPYC (family 25 model 17; bf16: AVX512-BF16, no AMX)`` (``unknown`` elsewhere). The
    bf16 units decide the bf16 ceiling: AMX tiles on recent Xeons, AVX512-BF16 dot products on Zen 4."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or "unknown"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    units = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    if units and "amx_bf16" not in flags:
        units.append("no AMX")
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}; bf16: {', '.join(units) or 'none, emulated'})")


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


class MatmulProbe:
    """Times ``n x n`` matmuls in ``dtype``: the practical compute ceiling, sampled as you go.

    The ceiling is the median of the samples, not the best one: this machine's speed drifts (a bf16
    2048 x 2048 product ranges over 480-930 GFLOP/s within minutes), so a benchmark takes one
    sample next to each of its own timed steps and compares medians with medians.

    Args:
        dtype: torch.float32 or torch.bfloat16 (what the step computes its convolutions in).
        device: where to measure.
        n: matrix side.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device, n: int = 2048) -> None:
        self.a = torch.randn(n, n, device=device).to(dtype)
        self.b = torch.randn(n, n, device=device).to(dtype)
        self.device, self.n = device, n
        self.reps = 1 if device.type == "cpu" else 20  # a GPU product is too short to time alone
        self.samples: list[float] = []
        self.sample()  # warm-up: oneDNN/cuBLAS kernel selection
        self.samples.clear()

    @torch.no_grad()
    def sample(self) -> float:
        """Time one product (``reps`` on a GPU); record and return its GFLOP/s."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.reps):
            self.a @ self.b
        sync(self.device)
        gflops = self.reps * 2 * self.n**3 / (time.perf_counter() - t0) / 1e9
        self.samples.append(gflops)
        return gflops

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def pool_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] (first 10k, as pretrain does)."""
    x = to_float(images[:10000])
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()


def build_encoder(backbone: str, images: torch.Tensor, width: int = 32, stem_stride: int = 1) -> Encoder:
    """A fresh encoder for ``images`` (uint8 (N, C, H, W)), normalized with their statistics."""
    mean, std = pool_stats(images)
    return Encoder(build_backbone(backbone, int(images.shape[1]), width, stem_stride), mean, std)


def load_fashion_mnist() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST as uint8 (N, 1, 28, 28) tensors and int64 labels, from the IDX files."""
    from ssl_models.data import read_fashion_mnist

    data = read_fashion_mnist(FASHION_MNIST_DIR)
    return {k: (torch.from_numpy(x), torch.from_numpy(y).long()) for k, (x, y) in data.items()}
