"""A stage that fails after a good run: one clear message as the last lines (what, where, what to
do, the full log), no traceback, exit 1 -- and the last good outputs still in place (DVC deletes a
stage's outputs before running it; the flow puts them back), so `dvc status` names what changed."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.flows.conftest import small_data_project, sslpipe

pytestmark = pytest.mark.e2e


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_ingest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy whose ingest ran once through DVC, on small synthetic Fashion-MNIST files,
    with those parameters committed."""
    project = small_data_project(tmp_path_factory.mktemp("failed-stage"))
    proc = subprocess.run(["dvc", "repro", "ingest"], cwd=project, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (project.parent / "empty").mkdir()
    return project


def test_a_failing_ingest_says_why_last_and_keeps_the_dataset(good_ingest: Path) -> None:
    project = good_ingest
    before = _digests(project / "data" / "dataset")
    empty = project.parent / "empty"
    proc = sslpipe(project, "run", "--set", "ingest.source=image_folder", "--set", f"ingest.image_folder.train_dir={empty}",
                   check=False, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    # our four lines end the output; Prefect's own "Finished in state Failed" log line (timestamped)
    # is written by its logging thread and may land between them
    ours = [line for line in proc.stderr.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d\.\d{3} \| ", line)]
    start = max((i for i, line in enumerate(ours) if line.startswith("error: stage ingest failed")), default=-1)
    last = ours[start:]
    assert start >= 0 and len(last) <= 4, ours[-6:]  # the error, what to do, the log: the end of the output
    assert last[0].startswith(f"error: stage ingest failed: {empty}: no images"), last
    assert last[0].endswith("found"), last  # one line, not wrapped
    # the dataset is a persist output that ingest replaces atomically: nothing to restore (no "kept:"
    # line), and the digests below show it untouched
    assert any("git checkout params.yaml" in line for line in last), last
    log = Path(last[-1].split("full log: ")[1])
    assert "no images" in log.read_text()
    assert "error: " + str(empty) in proc.stdout  # the stage's own line, as it ran

    assert _digests(project / "data" / "dataset") == before
    status = subprocess.run(["dvc", "status", "--json", "ingest"], cwd=project, env=subprocess_env(),
                            capture_output=True, text=True, check=True)
    changes = json.loads(status.stdout)["ingest"]
    assert any("params.yaml" in str(c.get("changed deps", {})) for c in changes), changes
    assert not any("changed outs" in c for c in changes), changes  # the dataset is the one dvc.lock records

    subprocess.run(["git", "checkout", "params.yaml"], cwd=project, check=True)
    proc = sslpipe(project, "stage", "ingest", check=False, timeout=300)
    assert proc.returncode == 0  # the last good parameters work again


def test_the_stage_command_exits_1_with_one_line(good_ingest: Path) -> None:
    """What DVC runs: a known error is one line on stderr and exit 1 (DVC reports "exited with 1")."""
    project = good_ingest
    bad = project / "bad.yaml"
    from tasks.run_setup import write_params_yaml

    write_params_yaml(project / "params.yaml", ["ingest.source=image_folder", f"ingest.image_folder.train_dir={project.parent / 'empty'}"],
                      target=bad)
    proc = sslpipe(project, "stage", "ingest", "--params", str(bad), check=False, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and proc.stderr.strip().endswith("found")
    bad.write_text(bad.read_text().replace("seed: 0", "sed: 0", 1))
    proc = sslpipe(project, "stage", "ingest", "--params", str(bad), check=False, timeout=300)
    assert proc.returncode == 2 and "sed" in proc.stderr  # a parameters error is a usage error
