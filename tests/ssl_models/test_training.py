"""The pieces pretraining and classifier training share (``ssl_models.training``): a GradScaler for
fp16 only, one step function for both loops, the loss read back from the device only where it is
logged, non-finite losses named by their step, and an exact epoch mean across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_models import checkpoint, training
from ssl_models.backbones import Encoder, SmallCNN
from ssl_models.classifier import train_classifier
from ssl_models.engine import train
from ssl_models.methods.base import SSLOutput
from ssl_models.training import LossMeter
from tests.ssl_models.test_engine import FixedEmbeddingMethod, config, images, make_simclr
from tests.ssl_models.test_evaluation import easy_task, ft_config, make_classifier

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")  # what copies a tensor's value to the host


# ------------------------------------------------------------------------------ set-up and scaler
@pytest.mark.parametrize(("precision", "enabled"), [("fp16", True), ("bf16", False), ("fp32", False)])
def test_setup_scales_the_loss_for_fp16_only(precision: str, enabled: bool) -> None:
    module = nn.Linear(3, 2)
    rt = training.setup(module, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), device="cpu",
                        precision=precision, channels_last=False)
    assert rt.scaler.is_enabled() is enabled
    assert rt.amp_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]
    assert rt.module is module and rt.model is module and rt.device == torch.device("cpu")
    assert rt.optimizer.param_groups[0]["params"] == list(module.parameters())


def spy_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, torch.dtype | None]]:
    """Record (scaler enabled, autocast dtype) of every ``training.train_step`` call."""
    calls: list[tuple[bool, torch.dtype | None]] = []
    real = training.train_step

    def spy(rt, *args, **kwargs):
        calls.append((rt.scaler.is_enabled(), rt.amp_dtype))
        return real(rt, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", spy)
    return calls


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_pretraining_and_classifier_share_the_step_and_its_scaler(monkeypatch: pytest.MonkeyPatch,
                                                                   precision: str) -> None:
    calls = spy_steps(monkeypatch)
    result = train(make_simclr(), images(32), config(epochs=1, precision=precision), progress=False)
    assert result.steps == 2 and len(calls) == 2
    x, y = easy_task(32, seed=0)
    history = train_classifier(make_classifier(), x, y, ft_config(min_steps=4, epochs=1, precision=precision))
    assert len(history) == 2 and len(calls) == 2 + 4  # 2 steps per epoch, 4 steps in all
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]
    assert calls == [(precision == "fp16", dtype)] * 6
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)


def test_fp16_pretraining_checkpoints_the_scaler_state(tmp_path: Path) -> None:
    """A real fp16 step on the CPU: the scaler's scale is in the checkpoint, and resuming is exact."""
    data, cfg = images(48), config(epochs=1, precision="fp16")
    reference = make_simclr()
    full = train(reference, data, cfg, progress=False)
    ckpt = tmp_path / "c.pt"
    train(make_simclr(), data, cfg, checkpoint_path=ckpt, progress=False, max_steps=2)
    assert checkpoint.load(ckpt)["scaler"]["scale"] > 1
    resumed = make_simclr(seed=7)
    again = train(resumed, data, cfg, checkpoint_path=ckpt, progress=False)
    assert again.resumed_from_step == 2 and again.history == full.history
    for k, v in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    fp32 = tmp_path / "fp32.pt"
    train(make_simclr(), data, config(epochs=1), checkpoint_path=fp32, progress=False)
    assert checkpoint.load(fp32)["scaler"] == {}  # disabled


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_steps_with_a_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_steps(monkeypatch)
    result = train(make_simclr(), images(32), config(epochs=1, precision="fp16", device="cuda"), progress=False)
    x, y = easy_task(32, seed=0)
    history = train_classifier(make_classifier(), x, y, ft_config(min_steps=4, epochs=1, precision="fp16",
                                                                  device="cuda"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.history[-1]["loss"]))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert calls == [(True, torch.float16)] * 6


# ------------------------------------------------------------------------------- loss read-backs
def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call that copies a tensor's value to the host."""
    calls: list[str] = []
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.mark.parametrize("log_every", [1, 4])
def test_loss_is_read_back_only_where_logged(monkeypatch: pytest.MonkeyPatch, log_every: int) -> None:
    """8 steps per epoch, 2 epochs: with log_every 4, 4 log points and 2 epoch ends (whose loss
    read is the log point's; plus ``embedding_std``), never one read per step."""
    method, data, cfg = make_simclr(), images(64), config(epochs=2, batch_size=8, log_every=log_every)
    logged: list[int] = []
    syncs = count_syncs(monkeypatch)
    result = train(method, data, cfg, on_step=lambda s, m: logged.append(s), progress=False)
    monkeypatch.undo()
    assert result.steps == 16 and logged == list(range(log_every, 17, log_every))
    if log_every == 4:
        assert len(syncs) <= len(logged) + 2 * result.epochs < result.steps
    else:  # the counter does see per-step reads
        assert len(syncs) >= result.steps


def test_loss_meter_sums_on_device_and_reads_once() -> None:
    meter = LossMeter(torch.device("cpu"), advice="try again")
    losses = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.2, 0.7)]
    for i, loss in enumerate(losses):
        meter.add(loss, i)
    reading = meter.read()
    assert reading.last == pytest.approx(0.7) and reading.count == 3
    assert reading.mean == sum(v.item() for v in losses) / 3  # float64, as Python sums the .item() values
    assert meter.read() is reading  # nothing added since: no new read-back
    assert meter.state_dict() == {"total": reading.total, "count": 3}
    meter.reset()
    assert meter.state_dict() == {"total": 0.0, "count": 0}
    meter.add(torch.tensor(float("inf")), 3)
    meter.add(torch.tensor(float("nan")), 4)
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 3; try again"):
        meter.read()
    quiet = LossMeter(torch.device("cpu"))  # no advice: reported, not raised
    quiet.add(torch.tensor(float("nan")), 0)
    assert quiet.read().bad_step == 0 and quiet.read().mean != quiet.read().mean


# ------------------------------------------------------------------------------ non-finite loss
class NaNFrom(FixedEmbeddingMethod):
    """A loss that turns nan (or inf) from the ``bad``-th forward (0-based) on."""

    def __init__(self, bad: int, value: float) -> None:
        torch.manual_seed(0)
        super().__init__(Encoder(SmallCNN(1, 4), [0.5], [0.25]), None)
        self.bad, self.value, self.calls = bad, value, 0

    def forward(self, views: list[torch.Tensor]) -> SSLOutput:
        loss = self.encoder(views[0]).pow(2).mean()
        self.calls += 1
        return SSLOutput(loss * self.value if self.calls > self.bad else loss)


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_nonfinite_loss_names_its_step_and_is_never_checkpointed(tmp_path: Path, value: float, word: str) -> None:
    ckpt, logged = tmp_path / "c.pt", []
    cfg = config(epochs=1, batch_size=4, log_every=4, checkpoint_every=6)  # 8 steps
    with pytest.raises(FloatingPointError, match=rf"loss is {word} at step 5; lower pretrain.lr or use fp32"):
        train(NaNFrom(5, value), images(32), cfg, checkpoint_path=ckpt, on_step=lambda s, m: logged.append(s),
              progress=False)
    assert logged == [4]  # found at the checkpoint of step 6, before writing it
    assert not ckpt.exists()


def test_classifier_reports_a_nonfinite_loss() -> None:
    x, y = easy_task(32, seed=0)
    history = train_classifier(make_classifier(), x, y, ft_config(min_steps=2, epochs=1, lr=float("inf")))
    assert not torch.isfinite(torch.tensor(history[-1]["train_loss"]))


# --------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("legacy", [False, True])
def test_epoch_mean_is_exact_across_a_resume(tmp_path: Path, legacy: bool) -> None:
    """Killed after 3 of 8 steps of the first epoch: the epoch's mean loss is the uninterrupted one,
    also from a checkpoint of the old format (the epoch's losses as a list)."""
    data, cfg = images(64), config(epochs=1, batch_size=8, log_every=4, checkpoint_every=100)
    full = train(make_simclr(), data, cfg, progress=False)
    ckpt, losses = tmp_path / "c.pt", []
    train(make_simclr(), data, config(epochs=1, batch_size=8, log_every=1), progress=False, max_steps=3,
          on_step=lambda s, m: losses.append(m["loss"]))
    train(make_simclr(), data, cfg, checkpoint_path=ckpt, progress=False, max_steps=3)
    state = checkpoint.load(ckpt)
    assert state["epoch_loss"]["count"] == 3
    assert state["epoch_loss"]["total"] == sum(losses)
    if legacy:
        del state["epoch_loss"]
        state["epoch_losses"] = losses
        checkpoint.save_atomic(state, ckpt)
    resumed = train(make_simclr(seed=4), data, cfg, checkpoint_path=ckpt, progress=False)
    assert resumed.resumed_from_step == 3 and resumed.history == full.history
