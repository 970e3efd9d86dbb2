"""Properties of the zoo's losses: known minima, symmetry in the views, invariance to the batch
order, float32 under bf16 autocast; Sinkhorn's marginals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.losses import (
    BarlowTwinsLoss,
    DINOLoss,
    InfoNCELoss,
    NegativeCosineSimilarity,
    SwAVLoss,
    VICRegLoss,
    sinkhorn,
    vicreg_terms,
)


def whitened(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(n, d) with zero mean and identity (biased) covariance over the batch."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    u, _, _ = torch.linalg.svd(x, full_matrices=False)  # orthonormal columns, still zero-mean
    return (u * math.sqrt(n)).float()


def pair(n: int = 16, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g)
    return z0, z0 + 0.5 * torch.randn(n, d, generator=g)


TWO_VIEW_LOSSES = {
    "negative_cosine": NegativeCosineSimilarity,
    "barlow_twins": BarlowTwinsLoss,
    "vicreg": VICRegLoss,
}


@pytest.mark.parametrize("n", [4, 16, 64])
@pytest.mark.parametrize("name", sorted(TWO_VIEW_LOSSES))
def test_two_view_losses_symmetric_and_batch_order_invariant(name: str, n: int) -> None:
    loss = TWO_VIEW_LOSSES[name]()
    z0, z1 = pair(n)
    value = loss(z0, z1)
    torch.testing.assert_close(loss(z1, z0), value)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss(z0[perm], z1[perm]), value)
    # permuting only one view breaks the pairs: the loss must see it
    assert not torch.isclose(loss(z0[perm], z1), value)


def test_negative_cosine_extremes() -> None:
    z = torch.randn(8, 5)
    loss = NegativeCosineSimilarity()
    assert loss(z, z).item() == pytest.approx(-1.0)
    assert loss(z, 3 * z).item() == pytest.approx(-1.0)  # scale-free
    assert loss(z, -z).item() == pytest.approx(1.0)


def test_barlow_twins_minimum_for_identical_whitened() -> None:
    z = whitened(64, 8)
    loss = BarlowTwinsLoss()
    assert loss(z, z).item() == pytest.approx(0.0, abs=1e-3)
    assert loss(z, 2 * z + 1).item() == pytest.approx(0.0, abs=1e-3)  # standardized per dimension
    # correlated dimensions are penalized by lambda, decorrelated but different views on the diagonal
    assert loss(z, whitened(64, 8, seed=1)).item() > 1.0
    redundant = torch.cat([z[:, :4], z[:, :4]], 1)
    assert loss(redundant, redundant).item() == pytest.approx(5.1e-3 * 8, rel=1e-2)


def test_vicreg_terms() -> None:
    z = whitened(64, 8) * 2  # std 2 > 1: no variance penalty; uncorrelated: no covariance penalty
    inv, var, cov = vicreg_terms(z, z)
    assert inv.item() == 0.0
    assert var.item() == 0.0
    assert cov.item() == pytest.approx(0.0, abs=1e-4)
    collapsed = torch.zeros(16, 8)
    _, var, _ = vicreg_terms(collapsed, collapsed)
    assert var.item() == pytest.approx(1 - math.sqrt(1e-4))
    assert VICRegLoss()(collapsed, collapsed).item() == pytest.approx(25 * (1 - 0.01))
    inv, _, _ = vicreg_terms(z, z + 1)
    assert inv.item() == pytest.approx(1.0)


def test_info_nce_known_value_and_batch_order() -> None:
    e = torch.eye(4)
    loss = InfoNCELoss(temperature=0.5)
    # q = k: positive logit 1/T; one negative at -1/T
    value = loss(e[:1], e[:1], -e[:1])
    assert value.item() == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)
    q, k = pair(8, 4)
    queue = torch.randn(32, 4)
    perm = torch.randperm(8)
    torch.testing.assert_close(loss(q[perm], k[perm], queue), loss(q, k, queue))
    torch.testing.assert_close(loss(q, k, queue[torch.randperm(32)]), loss(q, k, queue))
    assert loss(q, q, queue) < loss(q, -q, queue)


def dino_inputs(n: int = 6, d: int = 10, crops: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(n, d, generator=g) for _ in range(crops)]
    teacher = [torch.randn(n, d, generator=g) for _ in range(2)]
    return student, teacher


def test_dino_loss_value_symmetry_and_order() -> None:
    loss = DINOLoss(10).eval()  # eval: the center stays put
    student, teacher = dino_inputs(crops=2)

    def ce(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(F.softmax(t / 0.04, -1) * F.log_softmax(s / 0.1, -1)).sum(-1).mean()

    # two global crops: only the cross terms (the same view is skipped)
    expected = (ce(teacher[0], student[1]) + ce(teacher[1], student[0])) / 2
    torch.testing.assert_close(loss(student, teacher, 0.04), expected)
    student, teacher = dino_inputs(crops=4)
    value = loss(student, teacher, 0.04)
    swapped = loss([student[1], student[0], *student[2:]], teacher[::-1], 0.04)
    torch.testing.assert_close(swapped, value)
    perm = torch.randperm(6)
    torch.testing.assert_close(loss([s[perm] for s in student], [t[perm] for t in teacher], 0.04), value)
    # a student whose distribution equals the teacher's (s / 0.1 = t / 0.04) reaches the minimum,
    # the teacher's entropy, with two global crops
    t0, t1 = (0.1 * t for t in teacher)  # softer teacher distributions
    entropy = sum(-(F.softmax(t / 0.04, -1) * F.log_softmax(t / 0.04, -1)).sum(-1).mean() for t in (t0, t1)) / 2
    torch.testing.assert_close(loss([2.5 * t1, 2.5 * t0], [t0, t1], 0.04), entropy)  # crossed pairs match
    assert loss([2.5 * t0, 2.5 * t1], [t0, t1], 0.04) > entropy + 0.1  # same-view matches do not count


def test_dino_center_shifts_teacher() -> None:
    loss = DINOLoss(10)
    student, teacher = dino_inputs(crops=2)
    before = loss.eval()(student, teacher, 0.04)
    loss.center.fill_(3.0)  # a constant shift of every logit changes no softmax
    torch.testing.assert_close(loss(student, teacher, 0.04), before)
    loss.center.copy_(torch.randn(1, 10))
    assert not torch.isclose(loss(student, teacher, 0.04), before)


def test_sinkhorn_marginals() -> None:
    scores = F.normalize(torch.randn(32, 8), dim=1) @ F.normalize(torch.randn(8, 8), dim=1).T  # cosines
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert q.shape == (32, 8) and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(32))  # each sample's code is a distribution
    # each iteration spreads the mass over the prototypes more evenly than a plain softmax
    imbalance = lambda p: (p.sum(0) - 32 / 8).abs().max()  # noqa: E731
    assert imbalance(q) < imbalance(F.softmax(scores / 0.05, dim=1))
    assert imbalance(sinkhorn(scores, epsilon=0.05, iterations=10)) < imbalance(q)
    q = sinkhorn(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q.sum(0), torch.full((8,), 32 / 8), atol=1e-3, rtol=0)  # converged: equipartition
    # equivariant to the batch order, and the codes follow the scores' preferences
    perm = torch.randperm(32)
    torch.testing.assert_close(sinkhorn(scores[perm]), sinkhorn(scores)[perm])
    unbalanced = torch.zeros(32, 4)
    unbalanced[:, 0] = 1.0  # everybody prefers prototype 0 ...
    q = sinkhorn(unbalanced, iterations=50)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 8.0), atol=1e-3, rtol=0)  # ... equipartition wins


def test_swav_loss_symmetry_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(16, 6, generator=g).tanh() for _ in range(4)]
    loss = SwAVLoss()
    value = loss(scores, n_global=2)
    torch.testing.assert_close(loss([scores[1], scores[0], *scores[2:]], n_global=2), value)
    perm = torch.randperm(16)
    torch.testing.assert_close(loss([s[perm] for s in scores], n_global=2), value)
    assert loss([scores[0], scores[0]], n_global=2) < loss([scores[0], -scores[0]], n_global=2)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: BarlowTwinsLoss()(a, b),
        lambda a, b: VICRegLoss()(a, b),
        lambda a, b: NegativeCosineSimilarity()(a, b),
        lambda a, b: InfoNCELoss()(a, b, torch.randn(64, a.shape[1], generator=torch.Generator().manual_seed(0))),
        lambda a, b: SwAVLoss()([a, b], n_global=2),
        lambda a, b: DINOLoss(a.shape[1]).eval()([a, b], [a, b], 0.04),
    ],
    ids=["barlow_twins", "vicreg", "negative_cosine", "info_nce", "swav", "dino"],
)
def test_losses_float32_under_bf16_autocast(fn) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    a, b = pair(32, 16)
    ref = fn(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fn(a.bfloat16(), b.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.02, abs=0.02)
