"""The retrain flow on the session's project (through `sslpipe retrain`, on the real servers):
it skips when nothing changed; retrains and promotes a better model when the data changed (two
triggers at once register at most one version; the champion is made bad on purpose first, so that
"better" does not hang on a tiny training run); and keeps the champion when the challenger loses.

Each test sets up the registry state it needs, so they pass in any order; the two that retrain
on new data share its parameters, so whichever runs second finds the pipeline cached by DVC."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from tasks.drift import mmd_rbf
from tests.flows.conftest import SMOKE_MODEL, project_env, server_state, sslpipe

# smaller than --smoke where the outcome does not depend on it
FAST = ["pretrain.knn_monitor_images=0"]
# a challenger that learns (two arms, lr >= 2e-3 and 60 steps: a smoke model of 10 steps can stay
# near chance, below the test's constant model's 0.1). Both retrains on new data use it, so the second
# finds the first's params and data cached.
LEARNS = ["finetune.arms=[ssl_finetune,supervised]", "tune.search_space.ssl_finetune.lr=[0.002,0.003]",
          "tune.search_space.supervised.lr=[0.002,0.003]", "finetune.min_steps=60"]


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _registry(project):
    from mlflow import MlflowClient

    client = MlflowClient(server_state(project, "mlflow")["env"]["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions(f"name='{SMOKE_MODEL}'")
    aliases = client.get_registered_model(SMOKE_MODEL).aliases
    return client, sorted(int(v.version) for v in versions), {k: str(v) for k, v in aliases.items()}


def test_mmd_is_near_zero_for_one_distribution_and_large_for_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    assert abs(mmd_rbf(a, b)) < 0.02
    assert mmd_rbf(a, b + 1.0) > 0.1
    assert mmd_rbf(a, b + 1.0) < mmd_rbf(a, b + 2.0)  # grows with the shift
    assert np.isclose(mmd_rbf(a, b), mmd_rbf(b, a))  # symmetric


def _champion_of_the_workspace_data(client, project) -> str:
    """Make the version trained on the data now in the project's workspace the champion."""
    import json

    version = json.loads((project / "data" / "dataset" / "info.json").read_text())["version"]
    trained = [v for v in client.search_model_versions(f"name='{SMOKE_MODEL}'") if v.tags.get("data.version") == version]
    assert trained, f"no registered version was trained on the workspace's data {version}"
    champion = str(max(int(v.version) for v in trained))
    client.set_registered_model_alias(SMOKE_MODEL, "champion", champion)
    return champion


@pytest.mark.e2e
def test_skips_when_nothing_changed(ops_project):
    project, _ = ops_project
    client, _, _ = _registry(project)
    _champion_of_the_workspace_data(client, project)
    _, before, aliases = _registry(project)
    out = sslpipe(project, "retrain", "--smoke").stdout
    assert "skipped" in out, out
    client, after, aliases_after = _registry(project)
    assert after == before and aliases_after == aliases
    run = client.search_runs([client.get_experiment_by_name("sslpipe").experiment_id],
                             filter_string="tags.`sslpipe.stage` = 'retrain'", order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["retrain.decision"] == "skipped"
    assert "drift_score" in run.data.metrics and run.data.metrics["drift_score"] < 0.05


class _ConstantClassifier(torch.nn.Module):
    """A champion gone bad: the same class for every image (top-1 = that class's share, ~0.1)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype)
        probs[:, 0] = 1.0  # (N, K)
        return probs + 0 * x.mean()


def _register_bad_champion(client, project) -> str:
    """Register a constant model as champion, trained (say its tags) on data the workspace does not hold."""
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment("sslpipe")
    example = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with mlflow.start_run(run_name="bad champion (test)"):
        info = mlflow.pytorch.log_model(_ConstantClassifier(10), name="model", input_example=example,
                                        pip_requirements=["torch"])
    mv = mlflow.register_model(info.model_uri, SMOKE_MODEL,
                               tags={"data.version": "0ld-test-data", "metric.model_top1": "0.1"})
    client.set_registered_model_alias(SMOKE_MODEL, "champion", mv.version)
    return str(mv.version)


@pytest.mark.e2e
def test_two_concurrent_triggers_register_one_version_and_promote_the_better_model(ops_project):
    project, _ = ops_project
    client, _, _ = _registry(project)
    bad = _register_bad_champion(client, project)
    _, before, _ = _registry(project)
    # new data (another sample), a challenger that learns, a margin it clears against a constant model
    cmd = ["sslpipe", "retrain", "--smoke", *_sets(["ingest.seed=1", "register.min_improvement=0.0", *LEARNS, *FAST])]
    procs = [subprocess.Popen(cmd, cwd=project, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1500)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(o[-4000:] for o in outs)
    decisions = sorted(("promoted" if "promoted" in o else "skipped" if "skipped" in o else "kept") for o in outs)
    client, after, aliases = _registry(project)
    assert len(after) <= len(before) + 1, outs  # at most one version for one data + params (none if registered already)
    assert decisions == ["promoted", "skipped"], outs  # the second found the new champion's data: nothing to do
    assert aliases["champion"] != bad
    mv = client.get_model_version(SMOKE_MODEL, aliases["champion"])  # trained on the new data
    assert mv.tags["data.version"] != client.get_model_version(SMOKE_MODEL, bad).tags["data.version"]
    assert any(k.startswith("top1.data.") for k in mv.tags)  # scored on the new test data


@pytest.mark.e2e
def test_keeps_the_champion_when_the_challenger_loses(ops_project):
    project, _ = ops_project
    client, before, _ = _registry(project)
    # the smoke model (trained on other data) is champion; the new data's model (trained here, or
    # found by its idempotency key when the test above ran first) must clear a margin no model can
    first = str(before[0])
    client.set_registered_model_alias(SMOKE_MODEL, "champion", first)
    out = sslpipe(project, "retrain", "--smoke", *_sets(["ingest.seed=1", "register.min_improvement=1.0", *LEARNS, *FAST]),
                  timeout=1500).stdout
    assert "kept champion" in out, out
    client, after, aliases = _registry(project)
    assert len(after) <= len(before) + 1  # nothing registered twice for the same data and params
    assert aliases["champion"] == first
    challenger = client.get_model_version(SMOKE_MODEL, aliases["challenger"])
    assert challenger.tags["data.version"] != client.get_model_version(SMOKE_MODEL, first).tags["data.version"]
    run = client.search_runs([client.get_experiment_by_name("sslpipe").experiment_id],
                             filter_string="tags.`sslpipe.stage` = 'retrain'", order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["retrain.decision"] == "kept champion"
    assert {"challenger_top1", "champion_top1", "drift_score"} <= set(run.data.metrics)
