"""The training engine: a few SimCLR steps, exact kill-and-resume from a checkpoint, checkpoints
of another config ignored, atomic checkpoint files loaded with weights_only, collapse warning."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from ssl_models import checkpoint
from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder, SmallCNN
from ssl_models.engine import TrainConfig, _param_groups, train
from ssl_models.methods import SimCLR
from ssl_models.methods.base import SSLMethod, SSLOutput


def make_simclr(seed: int = 0, width: int = 8) -> SimCLR:
    torch.manual_seed(seed)
    encoder = Encoder(SmallCNN(in_channels=1, width=width), mean=[0.5], std=[0.25])
    return SimCLR(encoder, ViewAugment(crop_scale=(0.5, 1.0)), hidden_dim=32, out_dim=16, temperature=0.2)


def images(n: int = 48, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, lr=0.5, warmup_epochs=0.5, precision="fp32", channels_last=False,
                device="cpu", seed=3, checkpoint_every=100, log_every=1)
    return TrainConfig(**{**base, **kw})


def params_of(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def test_simclr_steps_finite_history() -> None:
    method = make_simclr()
    before = params_of(method)
    steps: list[tuple[int, dict[str, float]]] = []
    epochs: list[int] = []

    def on_epoch(epoch: int, m: SSLMethod) -> dict[str, float]:
        assert not m.training  # monitors run in eval mode
        epochs.append(epoch)
        return {"monitor": float(epoch) * 10}

    result = train(method, images(32), config(), on_step=lambda s, m: steps.append((s, m)), on_epoch=on_epoch,
                   progress=False)
    assert method.training  # back to train mode afterwards
    assert result.steps == 4 and result.epochs == 2 and result.resumed_from_step == 0
    assert [h["epoch"] for h in result.history] == [1, 2] and [h["step"] for h in result.history] == [2, 4]
    assert [h["monitor"] for h in result.history] == [10.0, 20.0] and epochs == [1, 2]
    for h in result.history:
        assert torch.isfinite(torch.tensor([h["loss"], h["embedding_std"]])).all()
        assert h["loss"] > 0 and h["embedding_std"] > 0
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    assert all(set(m) == {"loss", "lr", "images_per_sec"} for _, m in steps)
    assert max(m["lr"] for _, m in steps) <= 0.5 * 16 / 256 + 1e-12  # scaled with the batch size
    after = params_of(method)
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert result.images_per_sec > 0


def test_same_seed_same_result() -> None:
    a, b = make_simclr(), make_simclr()
    train(a, images(), config(), progress=False)
    train(b, images(), config(), progress=False)
    pa, pb = params_of(a), params_of(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("kill_at", [2, 4])  # mid-epoch, and mid-epoch after an epoch-end checkpoint
def test_kill_and_resume_is_exact(tmp_path: Path, kill_at: int) -> None:
    data, cfg = images(48), config(epochs=2)  # 3 steps per epoch, 6 in all
    reference = make_simclr()
    full = train(reference, data, cfg, progress=False)

    ckpt = tmp_path / "ckpt" / "pretrain.pt"
    killed = train(make_simclr(), data, cfg, checkpoint_path=ckpt, progress=False, max_steps=kill_at)
    assert killed.steps == kill_at and ckpt.exists()
    assert checkpoint.load(ckpt)["step"] == kill_at

    resumed_method = make_simclr(seed=99)  # another init: everything must come from the checkpoint
    resumed = train(resumed_method, data, cfg, checkpoint_path=ckpt, progress=False)
    assert resumed.resumed_from_step == kill_at
    assert resumed.steps == full.steps == 6 and resumed.epochs == full.epochs == 2
    final, expected = params_of(resumed_method), params_of(reference)
    assert final.keys() == expected.keys()
    for k in expected:
        assert torch.equal(final[k], expected[k]), k
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]
    for got, want in zip(resumed.history, full.history):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    # a finished run resumes to nothing
    again = train(make_simclr(seed=5), data, cfg, checkpoint_path=ckpt, progress=False)
    assert again.resumed_from_step == 6 and again.steps == 6


def test_checkpoint_optimizer_state_matches_parameters(tmp_path: Path) -> None:
    method, ckpt = make_simclr(), tmp_path / "c.pt"
    train(method, images(32), config(epochs=1), checkpoint_path=ckpt, progress=False)
    state = checkpoint.load(ckpt)
    assert state["step"] == 2 and set(state) >= {"fingerprint", "method", "optimizer", "scaler", "rng_cpu", "history"}
    params = [p for g in _param_groups(method, 0.0) for p in g["params"]]
    opt = state["optimizer"]
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    assert len(ids) == len(params)
    for i, p in zip(ids, params):
        assert opt["state"][i]["momentum_buffer"].shape == p.shape
    assert [g["weight_decay"] for g in opt["param_groups"]] == [5e-4, 0.0]
    for k, v in method.state_dict().items():
        assert state["method"][k].shape == v.shape


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    train(make_simclr(), images(32), config(epochs=1), checkpoint_path=ckpt, progress=False)
    for other_cfg, other_data in ((config(epochs=1, lr=0.1), images(32)), (config(epochs=1), images(48))):
        with pytest.warns(UserWarning, match="another config or data"):
            result = train(make_simclr(), other_data, other_cfg, checkpoint_path=ckpt, progress=False)
        assert result.resumed_from_step == 0
    with pytest.warns(UserWarning, match="another config"):  # another architecture
        result = train(make_simclr(width=4), images(48), config(epochs=1), checkpoint_path=ckpt, progress=False)
    assert result.resumed_from_step == 0


def test_checkpoint_of_same_shapes_other_strides_is_not_resumed(tmp_path: Path) -> None:
    """A stride changes what the weights mean but no state shape: the fingerprint sees it."""
    ckpt = tmp_path / "c.pt"
    train(make_simclr(), images(32), config(epochs=1), checkpoint_path=ckpt, progress=False)
    other = make_simclr()
    other.encoder.backbone.features[0].stride = (2, 2)
    assert [v.shape for v in other.state_dict().values()] == [v.shape for v in make_simclr().state_dict().values()]
    with pytest.warns(UserWarning, match="another config"):
        result = train(other, images(32), config(epochs=1), checkpoint_path=ckpt, progress=False)
    assert result.resumed_from_step == 0


def test_resume_loads_with_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "c.pt"
    train(make_simclr(), images(32), config(epochs=2), checkpoint_path=ckpt, progress=False, max_steps=1)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = train(make_simclr(), images(32), config(epochs=2), checkpoint_path=ckpt, progress=False)
    assert result.resumed_from_step == 1
    assert calls and all(c.get("weights_only") is True for c in calls)


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoint_load_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(path)
    ok = tmp_path / "ok.pt"
    checkpoint.save_atomic({"step": 3, "w": torch.ones(2), "history": [{"loss": 1.0}], "name": "x"}, ok)
    loaded = checkpoint.load(ok)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.ones(2)) and loaded["history"] == [{"loss": 1.0}]


def test_save_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.pt"  # parent created
    for i in range(3):
        checkpoint.save_atomic({"i": i}, path)
    assert checkpoint.load(path) == {"i": 2}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_save_atomic_crash_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    checkpoint.save_atomic({"version": 1, "w": torch.arange(4)}, path)
    old_bytes = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. the process is being killed

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"version": 2}, path)
    assert path.read_bytes() == old_bytes
    assert checkpoint.load(path)["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


class FixedEmbeddingMethod(SSLMethod):
    """A method whose loss trains the encoder but whose reported embedding is ``embed(n)``."""

    name = "fixed-embedding"

    def __init__(self, encoder: Encoder, embed) -> None:
        super().__init__(encoder, ViewAugment())
        self.embed = embed

    def forward(self, views: list[torch.Tensor]) -> SSLOutput:
        z = self.encoder(views[0])
        return SSLOutput(z.pow(2).mean(), embedding=self.embed(z.shape[0]))


def _fixed(embed) -> FixedEmbeddingMethod:
    torch.manual_seed(0)
    return FixedEmbeddingMethod(Encoder(SmallCNN(1, 4), [0.5], [0.25]), embed)


def test_collapse_warning_on_constant_embeddings() -> None:
    method = _fixed(lambda n: torch.ones(n, 16))
    with pytest.warns(UserWarning, match="collapsing"):
        result = train(method, images(32), config(epochs=1), progress=False)
    assert result.history[0]["embedding_std"] == pytest.approx(0.0, abs=1e-6)


def test_no_collapse_warning_on_spread_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    method = _fixed(lambda n: torch.randn(n, 16, generator=g))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(method, images(32), config(epochs=1), progress=False)
    assert result.history[0]["embedding_std"] > 0.1


def test_nonfinite_loss_raises() -> None:
    class NaNMethod(FixedEmbeddingMethod):
        def forward(self, views):
            return SSLOutput(self.encoder(views[0]).sum() * float("nan"))

    torch.manual_seed(0)
    method = NaNMethod(Encoder(SmallCNN(1, 4), [0.5], [0.25]), None)
    with pytest.raises(FloatingPointError, match="step 0"):
        train(method, images(32), config(epochs=1), progress=False)
