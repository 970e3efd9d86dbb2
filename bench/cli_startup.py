"""How long the ``sslpipe`` command takes to answer help, usage errors and params errors.

Each command runs as a fresh subprocess (as a user types it) in a throw-away copy of the project's
``params.yaml`` and ``dvc.yaml``, ``--repeats`` times; the table gives the median and the range
of wall seconds and the exit code. Every command listed fails fast or prints help: none runs a stage.

    .venv/bin/python bench/cli_startup.py
    .venv/bin/python bench/cli_startup.py --repeats 9
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import setup_lines

ROOT = Path(__file__).resolve().parents[1]
SSLPIPE = str(Path(sys.executable).parent / "sslpipe")

COMMANDS = (
    ("--help",),
    ("run", "--help"),
    ("models", "--help"),
    ("predict", "--help"),
    ("run", "--set", "epochs=3"),  # a params error: unknown key
    ("run", "--set", "pretrain.epochs=abc"),  # a params error: not an integer
    ("run", "--set", "pretrain.method=nosuch"),  # a params error: not a method
    ("retrain", "--set", "epochs=3"),  # a params error, before the retrain flow starts
    ("stage", "nosuch"),  # a usage error: unknown stage
    ("predict",),  # a usage error: no images
    ("predict", "no-such-image.png"),  # no such file
    ("augment-preview", "--set", "pretrain.epohcs=1"),  # a params error
    ("serve",),  # no Prefect server
)


def time_command(args: tuple[str, ...], cwd: Path) -> tuple[float, int]:
    """Wall seconds of one ``sslpipe ARGS`` run, and its exit code."""
    t0 = time.perf_counter()
    proc = subprocess.run([SSLPIPE, *args], cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs per command (the median is reported).")
    args = parser.parse_args()

    print("\n".join(setup_lines(torch.device("cpu"))))
    print(f"python:      {sys.version.split()[0]}")
    print(f"repeats:     {args.repeats} per command, fresh process each (page cache warm after the first)\n")
    print("| command | median s | min-max s | exit |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy2(ROOT / name, project / name)
        for command in COMMANDS:
            runs = [time_command(command, project) for _ in range(args.repeats)]
            seconds = [s for s, _ in runs]
            codes = sorted({c for _, c in runs})
            print(f"| `sslpipe {' '.join(command)}` | {statistics.median(seconds):.2f} | "
                  f"{min(seconds):.2f}-{max(seconds):.2f} | {','.join(map(str, codes))} |", flush=True)


if __name__ == "__main__":
    main()
