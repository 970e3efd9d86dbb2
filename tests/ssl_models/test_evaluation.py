"""Evaluation on frozen features (kNN, linear probe, feature extraction) and the supervised
classifier loop used for fine-tuning and the baseline."""

from __future__ import annotations

import pytest
import torch

from ssl_models.backbones import Encoder, SmallCNN
from ssl_models.classifier import Classifier, FinetuneConfig, accuracy, train_classifier
from ssl_models.evaluation import extract_features, knn_predict, knn_top1, linear_probe


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clusters(n_per_class: int, num_classes: int, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """Points around ``num_classes`` random unit directions; labels in class order, shuffled."""
    g = gen(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


# ------------------------------------------------------------------------------------------ kNN
@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_separable_clusters_perfect(k: int) -> None:
    x, y = clusters(30, 5, seed=0)
    q, qy = clusters(10, 5, seed=0)  # same centres (same seed), other noise draws below
    q = q + 0.05 * torch.randn(q.shape, generator=gen(9))
    assert knn_top1(x, y, q, qy, num_classes=5, k=k) == 1.0


def test_knn_random_labels_near_chance() -> None:
    g = gen(1)
    x, q = torch.randn(600, 16, generator=g), torch.randn(400, 16, generator=g)
    y, qy = torch.randint(0, 4, (600,), generator=g), torch.randint(0, 4, (400,), generator=g)
    acc = knn_top1(x, y, q, qy, num_classes=4, k=20)
    assert 0.25 - 0.09 < acc < 0.25 + 0.09  # chance 0.25, sd ~0.022


def test_knn_uses_cosine_similarity_and_chunks() -> None:
    x, y = clusters(20, 3, seed=2)
    q = x[:50] * torch.rand(50, 1, generator=gen(0)).add(0.1) * 100  # rescaled copies of bank points
    full = knn_predict(x, y, q, 3, k=1)
    assert torch.equal(full, y[:50])
    assert torch.equal(knn_predict(x, y, q, 3, k=7, chunk=7), knn_predict(x, y, q, 3, k=7, chunk=1024))


def test_knn_k_larger_than_bank() -> None:
    x, y = clusters(2, 2, seed=3)  # 4 bank points
    pred = knn_predict(x, y, x, 2, k=20)
    assert pred.shape == (4,)


# ---------------------------------------------------------------------------------- linear probe
def test_linear_probe_separable() -> None:
    x, y = clusters(40, 4, dim=8, spread=0.1, seed=6)
    q, qy = clusters(25, 4, dim=8, spread=0.1, seed=6)
    q = q + 0.05 * torch.randn(q.shape, generator=gen(7))
    # features far from standardized: the probe standardizes with the train statistics
    x, q = x * 30 + 7, q * 30 + 7
    pred, probs = linear_probe(x, y, q, num_classes=4)
    assert pred.shape == (100,) and probs.shape == (100, 4)
    assert torch.allclose(probs.sum(1), torch.ones(100), atol=1e-5)
    assert (pred == qy).float().mean().item() == 1.0
    assert probs.max(1).values.min() > 0.5  # confident


def test_linear_probe_random_labels_near_chance_and_deterministic() -> None:
    g = gen(5)
    x, q = torch.randn(200, 8, generator=g), torch.randn(400, 8, generator=g)
    y, qy = torch.randint(0, 2, (200,), generator=g), torch.randint(0, 2, (400,), generator=g)
    pred, _ = linear_probe(x, y, q, 2)
    assert abs((pred == qy).float().mean().item() - 0.5) < 0.1
    assert torch.equal(pred, linear_probe(x, y, q, 2)[0])


# ------------------------------------------------------------------------------ feature extraction
class Flatten(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4 * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.flatten(1))


def test_extract_features_shape_scaling_and_mode() -> None:
    model = Flatten().train()
    imgs = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=gen(0))
    feats = extract_features(model, imgs, batch_size=3, precision="fp32")
    assert feats.shape == (10, 16) and feats.dtype == torch.float32
    # eval mode (running stats 0/1 at init: identity) on uint8 scaled to [0, 1]
    assert torch.allclose(feats, imgs.flatten(1).float() / 255, atol=1e-4)
    assert model.training  # mode restored
    enc = Encoder(SmallCNN(3, 4), [0.5] * 3, [0.25] * 3)
    out = extract_features(enc, torch.rand(7, 3, 12, 12), batch_size=4, precision="fp32")
    assert out.shape == (7, 16)
    assert extract_features(enc, torch.empty(0, 3, 12, 12)).numel() == 0


# ------------------------------------------------------------------------------------- classifier
def easy_task(n: int, seed: int, side: int = 12):
    """Two classes: a bright top half or a bright bottom half, plus noise (the training crops flip
    horizontally, so left/right would not do)."""
    g = gen(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, side, side), generator=g)
    half = side // 2
    x[y == 0, :, :half, :] += 150
    x[y == 1, :, half:, :] += 150
    return x.clamp(0, 255).to(torch.uint8), y


def make_classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(Encoder(SmallCNN(1, 4), [0.3], [0.3]), num_classes=2)


def ft_config(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{**dict(epochs=3, lr=5e-3, batch_size=16, min_steps=30, crop_scale=(0.8, 1.0),
                                    precision="fp32", device="cpu", seed=0), **kw})


def test_train_classifier_learns() -> None:
    x, y = easy_task(64, seed=0)
    tx, ty = easy_task(64, seed=1)
    model = make_classifier()
    before = accuracy(model, tx, ty, precision="fp32")
    epochs = []
    history = train_classifier(model, x, y, ft_config(), val=(tx, ty), on_epoch=lambda e, m: epochs.append(e))
    assert len(history) == 8 and epochs == list(range(1, 9))  # min_steps: 30 steps at 4 per epoch
    assert all("val_top1" in h and torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    after = accuracy(model, tx, ty, precision="fp32")
    assert after >= 0.9 and after > before


def test_freeze_encoder_keeps_encoder_weights() -> None:
    x, y = easy_task(32, seed=0)
    model = make_classifier()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    train_classifier(model, x, y, ft_config(freeze_encoder=True, min_steps=6, epochs=1))
    for k, v in model.encoder.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, encoder_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())

    unfrozen = make_classifier()
    train_classifier(unfrozen, x, y, ft_config(freeze_encoder=False, min_steps=6, epochs=1))
    changed = [k for k, v in unfrozen.encoder.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert changed


def test_train_classifier_deterministic() -> None:
    x, y = easy_task(32, seed=0)
    a, b = make_classifier(), make_classifier()
    ha = train_classifier(a, x, y, ft_config(min_steps=4, epochs=1))
    hb = train_classifier(b, x, y, ft_config(min_steps=4, epochs=1))
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
