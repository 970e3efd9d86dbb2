"""What `sslpipe run` prints last, when its output is not a terminal (80 columns): URLs and paths
unbroken, a smoke run said to be one, the next commands named; a failed stage's message."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.app import console, err_console
from cli.report import print_failure, print_summary
from flows.pipeline import StageFailed

URL = "http://127.0.0.1:4200/runs/flow-run/0b5e7c1e-5f0e-4c1b-9d4f-2a1f7a3c9e11-and-a-long-tail"


def test_summary_lines_are_never_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    root = tmp_path / ("a-project-folder-with-a-rather-long-name" * 2)
    result = {"stages": [{"stage": "ingest", "status": "ran", "seconds": 3.0}], "metrics": {}, "registration": {},
              "smoke": True, "mlflow_run_id": "7a05f301c2f143deb52638f82e247359", "flow_run_id": "x", "flow_run_url": URL}
    with console.capture() as captured:
        print_summary(result, root)
    text = captured.get()
    assert URL in text and f"{root}/reports/metrics.json" in text
    assert "Smoke run: a plumbing check" in text
    assert "sslpipe predict" in text and "sslpipe compare" in text
    assert "git add" not in text  # a smoke run's parameters are no result to commit


def test_a_failure_ends_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    e = StageFailed("ingest", "/data/images: no images (.png, .jpg, .jpeg) found", ".sslpipe/logs/ingest.log",
                    ("data/dataset",))
    with err_console.capture() as captured:
        print_failure(e)
    lines = captured.get().splitlines()
    assert lines[0] == "error: stage ingest failed: /data/images: no images (.png, .jpg, .jpeg) found"
    assert lines[1].startswith("  kept: data/dataset, as the last good run left it")
    assert "git checkout params.yaml" in lines[2]
    assert lines[-1] == f"  full log: {tmp_path}/.sslpipe/logs/ingest.log"
