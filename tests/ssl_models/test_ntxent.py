"""NT-Xent (SimCLR): agrees with a plain-loop reference, symmetric, invariant to batch order and
embedding scale, minimal for aligned orthogonal pairs, maximal at collapse; finite in bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.losses import NTXentLoss


def reference_ntxent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> float:
    """The SimCLR paper's definition, one anchor at a time, in float64."""
    z = F.normalize(torch.cat([z0, z1]).double(), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        sims = [(z[i] @ z[k]).item() / temperature for k in range(n2) if k != i]
        total += -(z[i] @ z[positive]).item() / temperature + math.log(sum(math.exp(s) for s in sims))
    return total / n2


def pair(n: int, d: int = 16, noise: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g)
    return z0, z0 + noise * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("n", [2, 3, 8, 17, 64])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_reference(n: int, temperature: float) -> None:
    z0, z1 = pair(n, seed=n)
    loss = NTXentLoss(temperature)(z0, z1)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_ntxent(z0, z1, temperature), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_symmetric(n: int) -> None:
    z0, z1 = pair(n)
    loss = NTXentLoss()
    assert torch.allclose(loss(z0, z1), loss(z1, z0), atol=1e-6)


@pytest.mark.parametrize("n", [2, 5, 32])
def test_invariant_to_batch_permutation(n: int) -> None:
    z0, z1 = pair(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    loss = NTXentLoss()
    assert torch.allclose(loss(z0, z1), loss(z0[perm], z1[perm]), atol=1e-6)


def test_invariant_to_embedding_scale() -> None:
    z0, z1 = pair(8)
    loss = NTXentLoss()
    assert torch.allclose(loss(z0, z1), loss(3.0 * z0, 0.01 * z1), atol=1e-5)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_matching_views_beat_shuffled_pairs(n: int) -> None:
    z0, z1 = pair(n, d=32, noise=0.2)
    shuffled = z1.roll(1, dims=0)  # every image paired with another's view
    loss = NTXentLoss(0.2)
    assert loss(z0, z1) < loss(z0, shuffled) - 0.5


@pytest.mark.parametrize("n", [2, 4, 16, 32])
def test_aligned_orthogonal_pairs_minimal(n: int) -> None:
    """Both views identical, pairs mutually orthogonal: loss = log(1 + (2N - 2) exp(-1 / t)),
    which is ~0 at low temperature."""
    z = torch.eye(n, 2 * n)
    for t in (0.05, 0.5):
        expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
        assert NTXentLoss(t)(z, z).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert NTXentLoss(0.05)(z, z).item() < 1e-6
    assert NTXentLoss(0.5)(z, z) < NTXentLoss(0.5)(*pair(n, d=2 * n, noise=1.0))  # any other pairs do worse


@pytest.mark.parametrize("n", [2, 8, 64])
def test_collapse_gives_log_of_candidates(n: int) -> None:
    """All embeddings equal: the positive is indistinguishable from the 2N - 2 negatives."""
    z = torch.ones(n, 8)
    assert NTXentLoss(0.2)(z, z).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_batch_size_sweep_finite_with_gradients(n: int) -> None:
    z0, z1 = pair(n, d=8, seed=n)
    z0.requires_grad_(True)
    loss = NTXentLoss(0.1)(z0, z1)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0
    assert loss.item() < math.log(2 * n - 1) + 1 / 0.1 * 2  # bounded by temperature-scaled range


@pytest.mark.parametrize("n", [2, 16, 64])
def test_bf16_inputs(n: int) -> None:
    z0, z1 = pair(n, d=32)
    b0, b1 = z0.bfloat16().requires_grad_(True), z1.bfloat16()
    loss = NTXentLoss(0.1)(b0, b1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # computed in float32: the same as float32 on the bf16-rounded values
    assert loss.item() == pytest.approx(NTXentLoss(0.1)(b0.float(), b1.float()).item(), rel=1e-5)
    loss.backward()
    assert b0.grad.dtype == torch.bfloat16 and torch.isfinite(b0.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = NTXentLoss(0.1)(z0, z1)
    assert auto.dtype == torch.float32
    assert auto.item() == pytest.approx(NTXentLoss(0.1)(z0, z1).item(), rel=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", [2, 64])
def test_cuda_matches_cpu(n: int) -> None:
    z0, z1 = pair(n, d=32)
    cpu = NTXentLoss(0.1)(z0, z1)
    gpu = NTXentLoss(0.1)(z0.cuda(), z1.cuda())
    assert gpu.device.type == "cuda"
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        auto = NTXentLoss(0.1)(z0.cuda(), z1.cuda())
    assert auto.dtype == torch.float32 and torch.isfinite(auto)
