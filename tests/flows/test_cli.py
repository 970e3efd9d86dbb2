"""The `sslpipe` command line: help texts, unknown stages, and a misspelt --set key failing before
any stage starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ("sources", "ingest", "validate", "pretrain", "tune", "finetune", "evaluate", "register")


@pytest.fixture
def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml and dvc.yaml in a temporary directory, made the working directory; the
    environment variables the CLI sets for itself are put back afterwards."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    saved = dict(os.environ)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping inside key names
    yield root
    os.environ.clear()
    os.environ.update(saved)


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    text = result.output + (getattr(result, "stderr", "") if result.stderr_bytes is not None else "")
    return result, text


def outputs_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("params.yaml", "dvc.yaml"))


def test_help() -> None:
    result, text = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "stage"):
        assert command in text
    assert "self-supervised" in text


def test_run_help() -> None:
    result, text = invoke("run", "--help")
    assert result.exit_code == 0
    assert "--set" in text and "section.key=value" in text and "--smoke" in text and "--params" in text


def test_stage_help() -> None:
    result, text = invoke("stage", "--help")
    assert result.exit_code == 0
    assert "ingest, validate, pretrain" in text and "--params" in text


def test_no_args_shows_help() -> None:
    result, text = invoke()
    assert "Usage" in text and "stage" in text


def test_stage_bogus_names_the_stages(cli_project: Path) -> None:
    result, text = invoke("stage", "bogus")
    assert result.exit_code != 0
    assert "bogus" in text
    for name in STAGE_NAMES:
        assert name in text
    assert outputs_in(cli_project) == []


def test_stage_with_missing_params_file(cli_project: Path) -> None:
    result, text = invoke("stage", "validate", "--params", "nope.yaml")
    assert result.exit_code != 0
    assert "nope.yaml" in text and "not found" in text


def test_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result, text = invoke("stage", "ingest")
    assert result.exit_code == 2 and "dvc.yaml" in text


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the pipeline flow with a recorder: any call means a stage would have started."""
    import flows.pipeline

    calls: list[dict] = []

    def fake_pipeline(**kwargs):
        calls.append(kwargs)
        return {"stages": [{"stage": s, "status": "skipped"} for s in STAGE_NAMES], "metrics": {}}

    monkeypatch.setattr(flows.pipeline, "pipeline", fake_pipeline)
    return calls


@pytest.mark.parametrize(
    "override,key",
    [("pretrain.epohcs=1", "pretrain.epohcs"), ("pretrain.augment.flip=0.5", "pretrain.augment.flip"),
     ("pretrain.epochs=ten", "pretrain.epochs")],
)
def test_run_bad_override_fails_fast(cli_project: Path, pipeline_calls: list, override: str, key: str) -> None:
    params_before = (cli_project / "params.yaml").read_text()
    result, text = invoke("run", "--set", override)
    assert result.exit_code != 0
    assert f"--set {key}" in text and "params.yaml" not in text  # blamed on the option, not the file
    assert pipeline_calls == []  # no stage started
    assert (cli_project / "params.yaml").read_text() == params_before
    assert not any(name in outputs_in(cli_project) for name in ("data", "models", "reports", "mlflow.db"))


def test_run_good_override_reaches_the_pipeline(cli_project: Path, pipeline_calls: list) -> None:
    """The control for the test above: the same command with a valid key gets to the flow."""
    result, text = invoke("run", "--set", "pretrain.epochs=1")
    assert result.exit_code == 0, text
    assert len(pipeline_calls) == 1
    setup = pipeline_calls[0]["setup"]  # prepared once, by the command, and handed to the flow
    assert setup.overrides == ["pretrain.epochs=1"] and setup.smoke is False and setup.typed.pretrain.epochs == 1
    assert "skipped" in text


def all_commands() -> list[list[str]]:
    """Every command line of the app, as words: [], ["run"], ..., ["server", "start"], ..."""
    import typer.main

    def walk(group, prefix: list[str]) -> list[list[str]]:
        out = [prefix]
        for name, cmd in getattr(group, "commands", {}).items():
            out += walk(cmd, [*prefix, name])
        return out

    return walk(typer.main.get_command(app), [])


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "sslpipe")
def test_help_reads_as_a_person_expects(command: list[str]) -> None:
    """Flags are plain flags, values have names (``--set KEY=VALUE``), no ``<bool>``-style types."""
    result, text = invoke(*command, "--help")
    assert result.exit_code == 0, text
    assert not re.search(r"<[\w\[\], ]+>", text), text
    for flag in ("--smoke", "--force", "--strict", "--help"):  # a flag takes no value: its help follows
        for line in text.splitlines():
            if line.strip().startswith(f"{flag} "):
                assert re.match(rf"\s*{flag}(\s{{2,}}\S|$)", line), line
    if command == ["run"]:
        assert "--set KEY=VALUE" in text and "--params FILE" in text


def test_run_with_a_method_that_needs_its_backbone_takes_it_and_says_so(cli_project: Path, pipeline_calls: list) -> None:
    result, text = invoke("run", "--set", "pretrain.method=mae")
    assert result.exit_code == 0, text
    assert pipeline_calls[0]["setup"].typed.pretrain.backbone == "vit_tiny"
    assert "mae trains a vit_tiny backbone, so pretrain.backbone small_cnn (its default) became vit_tiny" in text
    result, text = invoke("run", "--set", "pretrain.method=mae", "--set", "pretrain.backbone=resnet18")
    assert result.exit_code == 2 and "mae needs backbone vit_tiny (got resnet18)" in text
    assert len(pipeline_calls) == 1


FAST_FAILURES = (["run", "--set", "epochs=3"], ["run", "--set", "pretrain.epochs=abc"], ["retrain", "--set", "epochs=3"],
                 ["stage", "nosuch"],
                 ["predict", "missing.png"], ["augment-preview", "--set", "pretrain.epohcs=1"], ["serve"])


def test_usage_and_params_errors_import_nothing_heavy(cli_project: Path) -> None:
    """A misspelt --set, an unknown stage, a missing image, no server: each is answered before
    torch, MLflow, Prefect or Ray is imported (what makes them answer in well under a second;
    bench/cli_startup.py times them)."""
    code = ("import json, os, sys\nfrom typer.testing import CliRunner\nfrom cli import app\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    os.environ.pop('PREFECT_API_URL', None)\n"
            "    code = CliRunner().invoke(app, args).exit_code\n"
            "    heavy = [m for m in ('torch', 'mlflow', 'prefect', 'ray') if m in sys.modules]\n"
            "    print(' '.join(args), code, heavy)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(FAST_FAILURES)], cwd=cli_project, env=env,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert out == [f"{' '.join(args)} {1 if args[0] in ('predict', 'serve') else 2} []" for args in FAST_FAILURES]


def test_the_data_stages_import_no_torch(cli_project: Path, tmp_path: Path) -> None:
    """`sslpipe stage sources|ingest|validate` read no SSL method and make no tensor: they run
    without importing torch (~1.5-2.5 s of every pipeline run's start-up each)."""
    from tests.fixtures import write_fashion_mnist

    write_fashion_mnist(tmp_path / "fashion", n_train=100, n_test=30, side=16)
    params = cli_project / "params.yaml"
    params.write_text(params.read_text().replace("/usr/share/datasets/fashion-mnist", str(tmp_path / "fashion")))
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cli import app\n"
            "for name in ('sources', 'ingest', 'validate'):\n"
            "    result = CliRunner().invoke(app, ['stage', name, '--no-progress'])\n"
            "    print(name, result.exit_code, 'torch' in sys.modules, result.output.strip().splitlines()[-1:])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=cli_project, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [[name, "0", "False"] for name in ("sources", "ingest", "validate")], \
        out.stdout + out.stderr[-3000:]
    assert (cli_project / "data" / "dataset" / "metadata.parquet").exists()


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "sslpipe"
    if not exe.exists():
        pytest.skip("sslpipe console script not installed in this environment")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "stage" in proc.stdout
