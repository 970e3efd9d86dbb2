"""The MLflow model registry in one place: who is champion, the one promotion rule, and every alias
write. The register stage and the retrain flow both go through here.

The rule: a new version takes ``champion`` only when its top-1 beats the champion's by more than
``register.min_improvement``, both scored through MLflow pyfunc (as they are served) on the same
test images; otherwise it becomes ``challenger``. A worse model never becomes champion.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
IDEMPOTENCY_TAG = "sslpipe.idempotency_key"
# sections that do not shape the model: changing them must not register the same model again
NOT_SHAPING = ("register", "retrain")


class RegistryError(RuntimeError):
    """A registered model cannot be used as the rule needs (e.g. it cannot read its own test data)."""


@dataclass
class Champion:
    version: str
    data_version: str | None  # the ``data.version`` tag of the version
    run_id: str | None  # the register stage's run (it holds the drift reference)


@dataclass
class Decision:
    """What the rule decided for a new version, and the figures it decided on."""

    promoted: bool
    alias: str  # the alias the version holds now
    reason: str
    champion_before: str | None
    challenger_top1: float | None
    champion_top1: float | None


def champion_version(client, name: str):
    """The model version holding the ``champion`` alias, or None (no model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # INVALID_PARAMETER_VALUE (no alias) or RESOURCE_DOES_NOT_EXIST (no model)
        return None


def current_champion(client, name: str) -> Champion | None:
    mv = champion_version(client, name)
    return None if mv is None else Champion(str(mv.version), mv.tags.get("data.version"), mv.run_id)


def model_versions(client, name: str) -> tuple[list[Any], dict[str, list[str]]]:
    """Every version of ``name``, newest first, and the aliases of each version (search results
    carry no aliases; the registered model does). Empty when the model is not registered."""
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        return [], {}
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    return sorted(versions, key=lambda mv: int(mv.version), reverse=True), aliases


def aliases_of(client, name: str, version: str) -> list[str]:
    return [a for a, v in client.get_registered_model(name).aliases.items() if str(v) == str(version)]


# ------------------------------------------------------------------------------- idempotency
def params_hash(params: dict[str, Any]) -> str:
    """A short hash of the parameters that shape a model."""
    shaping = {k: v for k, v in params.items() if k not in NOT_SHAPING}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:16]


def idempotency_key(data_version: str, params_digest: str | None) -> str:
    return f"{data_version}-{params_digest or 'any'}"


def find_version(client, name: str, key: str):
    """The model version registered with idempotency ``key``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tags.`{IDEMPOTENCY_TAG}` = '{key}'")
    except MlflowException:
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


# ------------------------------------------------------------------------------ the rule
def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def class_probabilities(output: Any) -> tuple[np.ndarray, list[str] | None]:
    """A registered model's output -> (N, K) class probabilities, and the class names when the
    output names them: a DataFrame (``class``, then a column per class: ``tasks/served_model.py``),
    or the bare (N, K) array of versions registered before it."""
    if hasattr(output, "columns") and "class" in output.columns:
        probs = output.drop(columns="class")
        return probs.to_numpy(dtype=np.float64), [str(c) for c in probs.columns]
    return np.asarray(output), None


@contextmanager
def open_model(uri: str) -> Iterator[Any]:
    """The pyfunc model at ``uri``, loaded as ``mlflow models serve`` loads it, its files in a
    temporary directory removed on exit. (Without ``dst_path`` MLflow downloads a model from a
    remote store -- an object store, a tracking server's artifacts -- into a fresh ``mkdtemp`` that
    nothing removes: a copy of the model left in /tmp by every load.)"""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="sslpipe-model-") as tmp:
        yield mlflow.pyfunc.load_model(uri, dst_path=tmp)


def score_top1(model_uri: str, x_test, y_test, batch_size: int = 512) -> float | None:
    """Top-1 of a registered model (through MLflow pyfunc, as it is served) on uint8 test images
    (N, C, H, W); None when the model cannot read them (another image shape)."""
    from mlflow.exceptions import MlflowException

    correct = 0
    with open_model(model_uri) as model:
        for start in range(0, len(y_test), batch_size):
            x = (x_test[start : start + batch_size].float() / 255).numpy()
            try:
                probs, _ = class_probabilities(model.predict(x))  # (n, K)
            except (MlflowException, RuntimeError, AssertionError, ValueError):
                return None
            correct += int((probs.argmax(1) == y_test[start : start + batch_size].numpy()).sum())
    return correct / max(len(y_test), 1)


def beats(challenger_top1: float, champion_top1: float | None, min_improvement: float) -> tuple[bool, str]:
    """The promotion rule: whether the challenger replaces the champion, and why."""
    if champion_top1 is None:
        return True, "the champion cannot be scored on this test data (or there is none)"
    if challenger_top1 > champion_top1 + min_improvement:
        return True, (f"the challenger's top-1 {challenger_top1:.4f} beats the champion's {champion_top1:.4f} "
                      f"by more than {min_improvement} on the same test images")
    return False, (f"the challenger's top-1 {challenger_top1:.4f} does not beat the champion's {champion_top1:.4f} "
                   f"by more than {min_improvement} on the same test images")


def gate(client, name: str, version: str, x_test, y_test, min_improvement: float, data_version: str) -> Decision:
    """Apply the rule to ``version`` against the current champion on the test images
    ``x_test``/``y_test``, move the aliases, and tag both versions with their scores.

    Raises:
        RegistryError: when ``version`` cannot be scored on its own test data.
    """
    version = str(version)
    champion = champion_version(client, name)
    before = str(champion.version) if champion else None
    challenger_top1 = score_top1(model_uri(name, version), x_test, y_test)
    if challenger_top1 is None:
        raise RegistryError(f"{model_uri(name, version)} cannot be scored on its own test data")
    client.set_model_version_tag(name, version, f"top1.data.{data_version}", f"{challenger_top1:.4f}")
    if before == version:
        return Decision(True, CHAMPION, f"version {version} is the champion already", before, challenger_top1, challenger_top1)
    champion_top1 = score_top1(model_uri(name, before), x_test, y_test) if before else None
    if before and champion_top1 is not None:
        client.set_model_version_tag(name, before, f"top1.data.{data_version}", f"{champion_top1:.4f}")
    promoted, reason = beats(challenger_top1, champion_top1, min_improvement)
    if before is None:
        reason = "no champion yet"
    set_alias(client, name, CHAMPION if promoted else CHALLENGER, version)
    return Decision(promoted, CHAMPION if promoted else CHALLENGER, reason, before, challenger_top1, champion_top1)


def set_alias(client, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``; a version that becomes champion stops being challenger."""
    client.set_registered_model_alias(name, alias, str(version))
    if alias == CHAMPION and str(version) in {str(v) for a, v in client.get_registered_model(name).aliases.items()
                                               if a == CHALLENGER}:
        client.delete_registered_model_alias(name, CHALLENGER)
