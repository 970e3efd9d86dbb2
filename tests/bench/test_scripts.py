"""The benchmark scripts run and report what they say they measure. Tiny settings and synthetic
data: the figures themselves are measured by hand (bench/README.md), never asserted here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures import write_fashion_mnist

BENCH = REPO / "bench"


def run_script(script: str, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if data_dir is not None:
        env["FASHION_MNIST_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def table(stdout: str) -> list[list[str]]:
    """The rows of the markdown table a script prints (header and rule left out)."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def number(cell: str) -> float:
    return float(cell.replace(",", "").split()[0].rstrip("x%"))


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST-format files of separable 28x28 images: the shape the benchmarks expect."""
    directory = tmp_path_factory.mktemp("fashion-mnist")
    write_fashion_mnist(directory, n_train=256, n_test=80, side=28, seed=0)
    return directory


def simclr_small_cnn_flops(batch: int, stem_stride: int) -> float:
    """FLOPs of one SimCLR step (forward + backward) on small_cnn width 32, 28x28 grayscale, head
    128-512-128, counted by hand: 2 FLOPs per multiply-add; a backward pass is a gradient for the
    input and one for the weights, except the first convolution, whose input (the views) needs none."""
    views = 2 * batch
    # (c_in, c_out, output side) of the five 3x3 convolutions; the stem's stride-2 variant halves
    # only the first one's output (the second keeps 14x14 at stride 1)
    convs = [(1, 32, 28 // stem_stride), (32, 64, 14), (64, 64, 14), (64, 128, 7), (128, 128, 7)]
    conv_fwd = [2 * side * side * c_out * c_in * 9 for c_in, c_out, side in convs]
    conv = 3 * sum(conv_fwd) - conv_fwd[0]
    head = 3 * 2 * (128 * 512 + 512 * 128)
    similarity = 3 * 2 * views * views * 128  # z @ z.T and its two gradients
    return views * (conv + head) + similarity


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_throughput_counts_the_step_flops_and_the_ceiling(stem_stride: int) -> None:
    out = run_script("throughput.py", "--precision", "fp32", "bf16", "--batch-size", "64", "--seconds", "0",
                     "--min-steps", "2", "--warmup", "0", "--matmul-size", "256", "--threads", "1",
                     "--stem-stride", str(stem_stride))
    assert out.returncode == 0, out.stderr
    assert "cpu:" in out.stdout and "bf16:" in out.stdout  # the machine, with its bf16 hardware
    rows = table(out.stdout)
    assert [r[0] for r in rows] == ["fp32", "bf16"]
    for precision, channels_last, compiled, views_s, _best, step_ms, gflop, gflops, ceiling, share, _first in rows:
        assert compiled == "no"
        assert channels_last == ("yes" if precision == "bf16" else "no")
        assert number(gflop) == pytest.approx(simclr_small_cnn_flops(64, stem_stride) / 1e9, abs=0.06)
        assert number(views_s) == pytest.approx(128 / (number(step_ms) / 1e3), rel=0.02)
        assert number(gflops) == pytest.approx(number(gflop) / (number(step_ms) / 1e3), rel=0.02)
        # the table prints GFLOP/s, ceiling and share as integers: allow exactly their rounding
        expected = 100 * number(gflops) / number(ceiling)
        rounding = 0.5 + expected * (0.5 / number(gflops) + 0.5 / number(ceiling))
        assert number(share) == pytest.approx(expected, abs=rounding)


def test_methods_scores_each_method_next_to_random_init(fashion_dir: Path) -> None:
    out = run_script("methods.py", "--images", "256", "--batch-size", "32", "--epoch-images", "128",
                     "--methods", "simclr", "rotation", data_dir=fashion_dir)
    assert out.returncode == 0, out.stderr
    rows = table(out.stdout)
    assert [r[0] for r in rows] == ["simclr", "rotation"]
    for _method, backbone, _optim, seen, _wall, knn, knn_random, linear, linear_random in rows:
        assert backbone == "small_cnn" and number(seen) == 256
        assert all(0.0 <= number(v) <= 1.0 for v in (knn, knn_random, linear, linear_random))
    assert rows[0][6] == rows[1][6]  # one random-init encoder per backbone, scored once


def test_vs_lightly_rejects_an_unknown_run_before_any_work() -> None:
    out = run_script("vs_lightly.py", "--runs", "sslpipe:simclr", "lightly:simclr:fp32")
    assert out.returncode == 2
    assert "lightly:simclr:fp32" in out.stderr and "w<num_workers>" in out.stderr


def test_vs_lightly_compares_per_seed_or_says_it_skipped(fashion_dir: Path) -> None:
    out = run_script("vs_lightly.py", "--train-images", "64", "--batch-size", "32", "--seeds", "0", "1",
                     "--runs", "sslpipe:simclr", "lightly:simclr:w0:fp32", data_dir=fashion_dir)
    assert out.returncode == 0, out.stderr
    if importlib.util.find_spec("lightly") is None:  # an optional extra (bench/README.md)
        assert out.stdout.startswith("SKIPPED: lightly is not installed")
        return
    rows = {r[0]: r for r in table(out.stdout)}
    assert set(rows) == {"sslpipe:simclr", "lightly:simclr:w0:fp32"}
    assert len(rows["sslpipe:simclr"][4].split()) == 2  # kNN of each seed
    assert rows["lightly:simclr:w0:fp32"][6] == "1.00x" and rows["lightly:simclr:w0:fp32"][7] == "-"
    assert rows["sslpipe:simclr"][7].startswith(("+", "-")) and "±" in rows["sslpipe:simclr"][7]


@pytest.fixture
def label_efficiency(monkeypatch: pytest.MonkeyPatch):
    """bench/label_efficiency.py as a module (its ``_common`` import found in bench/)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("label_efficiency", BENCH / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_efficiency_reports_mean_std_and_ties(label_efficiency) -> None:
    """The per-arm table over seeds: mean +- std, the SSL-vs-baseline difference per seed, and a
    tie when it is under two standard deviations. (The stage functions it runs are tested in
    tests/tasks; here its arithmetic, on made-up metrics.)"""

    def run(ssl: float, base: float, knn: float = 0.85) -> dict:
        arms = {"ssl_finetune": {"val_top1": ssl, "test_top1": ssl}, "supervised": {"val_top1": base, "test_top1": base}}
        return {"knn_top1": knn, "linear_top1": knn + 0.01,
                "fractions": {"0.1": {"num_labels": 100, "num_val": 20, "arms": arms,
                                      "selected": "ssl_finetune" if ssl >= base else "supervised"}}}

    ahead = "\n".join(label_efficiency.report({0: run(0.80, 0.70, 0.84), 1: run(0.82, 0.71, 0.86), 2: run(0.81, 0.70)}))
    assert "ssl_finetune" in ahead and "0.8100 +- 0.0100" in ahead and "SSL ahead" in ahead
    assert "kNN 0.8500 +- 0.0100, linear probe 0.8600 +- 0.0100" in ahead  # the encoders' spread (--pretrain)
    tie = "\n".join(label_efficiency.report({0: run(0.80, 0.70), 1: run(0.70, 0.80), 2: run(0.76, 0.75)}))
    assert "a tie (under 2 std)" in tie
    assert "shipped (validation-best) per seed: ssl_finetune, supervised, ssl_finetune" in tie


def test_label_efficiency_pretrains_per_seed_only_when_asked(label_efficiency) -> None:
    """Without --pretrain every seed fine-tunes the project's encoder; with it, each seed sets
    pretrain.seed and copies no encoder (it trains its own)."""
    assert label_efficiency.seed_overrides(2, pretrain=False) == ["finetune.seed=2", "tune.seed=2"]
    assert label_efficiency.seed_overrides(2, pretrain=True) == ["finetune.seed=2", "tune.seed=2", "pretrain.seed=2"]
    encoder = label_efficiency.ENCODER
    assert encoder in label_efficiency.needs(pretrain=False) and encoder not in label_efficiency.needs(pretrain=True)
    assert "params.yaml" in label_efficiency.needs(pretrain=True)


@pytest.mark.e2e  # starts a local Ray and Ray Train workers
def test_distributed_compares_workers_with_one_process(fashion_dir: Path) -> None:
    out = run_script("distributed.py", "--images", "128", "--batch-size", "32", "--epochs", "1", "--width", "4",
                     "--precision", "fp32", data_dir=fashion_dir)
    assert out.returncode == 0, out.stderr
    assert "shared" in out.stdout and "ray.init:" in out.stdout and "4 steps" in out.stdout
    rows = table(out.stdout)
    assert [(r[0], r[1]) for r in rows] == [("1 process (no Ray)", "1"), ("Ray Train, 1 worker", "1"),
                                            ("Ray Train, 2 workers", "2")]
    single, one_worker, two = (number(r[2]) for r in rows)
    assert rows[0][3] == "1.00x" and number(rows[1][3]) == pytest.approx(one_worker / single, abs=0.015)
    assert rows[1][4] == "" and number(rows[2][4]) == pytest.approx(100 * two / (2 * one_worker), abs=1.5)


def test_cpu_by_process_counts_a_busy_child_and_returns_its_exit_code() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass\nraise SystemExit(3)"
    out = run_script("cpu_by_process.py", "--interval", "0.2", "--", sys.executable, "-c", busy)
    assert out.returncode == 3, out.stderr  # the command's own
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines() if line.startswith("| ")]
    kinds = {cells[0]: number(cells[1]) for cells in rows if len(cells) == 3 and cells[0] != "kind of process"}
    assert 1.0 <= kinds["other"] <= 3.0, out.stdout  # the child's 1.5 CPU-seconds, less its last sample
    assert "exit code 3" in out.stdout and "busy over the run" in out.stdout
    assert run_script("cpu_by_process.py").returncode == 2  # no command: a usage error
