"""A pretraining run's state between steps, and its checkpoint: what ``engine.train`` resumes
from and writes (atomically), so that a killed run continues exactly where it stopped."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_models import checkpoint, dist
from ssl_models.training import LossMeter, Runtime

#: what a non-finite pretraining loss suggests
NAN_ADVICE = "lower pretrain.lr or use fp32"


@dataclass
class RunState:
    """What a run carries from step to step, and what its checkpoint holds besides the weights."""

    step: int  # global steps done
    history: list[dict[str, float]]  # one record per finished epoch
    meter: LossMeter  # the current epoch's running loss, on the device
    fingerprint: str  # the run's ``_fingerprint``: a checkpoint with another is not resumed
    path: Path | None  # the checkpoint file; None: no checkpoints
    on_saved: Callable[[int], None] | None = None  # called with the step after each checkpoint, in every worker


def resume(path: Path | None, rt: Runtime, fingerprint: str) -> RunState:
    """The state to start from: the checkpoint at ``path`` if it is of this run (weights, optimizer,
    scaler and CPU RNG restored into ``rt``), else step 0 (with a warning if another run's)."""
    fresh = RunState(0, [], LossMeter(rt.device, NAN_ADVICE), fingerprint, path)
    if path is None or not path.exists():
        return fresh
    state = checkpoint.load(path)
    if state.get("fingerprint") != fingerprint:
        warnings.warn(f"{path}: checkpoint is from another config or data; starting afresh", stacklevel=3)
        return fresh
    rt.module.load_state_dict(state["method"])
    rt.optimizer.load_state_dict(state["optimizer"])
    rt.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if "epoch_loss" in state:
        total, count = float(state["epoch_loss"]["total"]), int(state["epoch_loss"]["count"])
    else:  # written before the loss meter: the epoch's losses as a list
        losses = [float(v) for v in state.get("epoch_losses", [])]
        total, count = sum(losses), len(losses)
    meter = LossMeter(rt.device, NAN_ADVICE, total, count)
    return RunState(int(state["step"]), list(state["history"]), meter, fingerprint, path)


def save_checkpoint(state: RunState, rt: Runtime) -> None:
    """Write ``state`` and ``rt``'s weights, optimizer, scaler and CPU RNG atomically to
    ``state.path`` (nothing if None), then call ``state.on_saved``. Reads the loss back first, so a
    non-finite loss raises instead of being saved. In a distributed run rank 0 alone writes (every
    worker holds the same weights, optimizer and RNG) and every worker calls ``on_saved``."""
    if state.path is None:
        return
    epoch_loss = state.meter.state_dict()  # in every worker: a non-finite loss raises in all of them
    if dist.is_main_process():
        checkpoint.save_atomic(
            {
                "fingerprint": state.fingerprint,
                "step": state.step,
                "method": rt.module.state_dict(),
                "optimizer": rt.optimizer.state_dict(),
                "scaler": rt.scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "history": state.history,
                "epoch_loss": epoch_loss,  # so a mid-epoch resume averages the whole epoch
            },
            state.path,
        )
    if state.on_saved is not None:
        state.on_saved(state.step)
