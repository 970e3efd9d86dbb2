"""Where a command's CPU time goes, by kind of process: the pipeline's stages, DVC, the Prefect
and MLflow servers, Ray's daemons and workers, the test workers.

Every process on the machine is sampled once a second while COMMAND runs (psutil: user + system
seconds, counted from this script's start for processes that were already running). At the end each
process is put in a kind by its command line; the tables give the CPU seconds per kind with their
share, and the busiest command lines. A process's last second before it exits is not counted, and a
process that lives less than a second may be missed: the totals are a lower bound, good for shares.
The machine's busy share over the run (all cores, from /proc/stat) says whether the command was
CPU-bound: then only less CPU work makes it faster, not more parallelism.

    .venv/bin/python bench/cpu_by_process.py -- .venv/bin/sslpipe run --smoke
    CI=true .venv/bin/python bench/cpu_by_process.py --top 20 -- make test
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import psutil
from _common import cpu_model, load_average

# (kind, pattern on the command line), first match wins
KINDS = (
    ("pipeline stage (sslpipe stage)", r"sslpipe stage "),
    ("sslpipe command (flows, CLI)", r"bin/sslpipe\b"),
    ("dvc", r"bin/dvc\b|-m dvc\b"),
    ("Prefect server", r"prefect server start|prefect\.server|prefect/server"),
    ("Prefect worker and runner", r"prefect worker|prefect\.runner|prefect\.engine"),
    ("MLflow server", r"mlflow server|mlflow\.server|uvicorn.*mlflow|huey"),
    ("Ray workers and trials", r"ray::(?!IDLE|DashboardAgent|RuntimeEnvAgent)|ray/_private/workers/"),
    ("Ray daemons", r"ray::|/ray/|raylet|gcs_server"),
    ("pytest and its workers", r"pytest|execnet|import sys;exec\(eval\(sys\.s"),
    ("PostgreSQL", r"postgres"),
    ("object store (SeaweedFS)", r"weed"),
    ("Chromium", r"chrom"),
)


def kind(cmdline: str) -> str:
    return next((name for name, pattern in KINDS if re.search(pattern, cmdline)), "other")


def cpu_seconds(times: Any) -> float:
    return times.user + times.system


def sample(seen: dict[tuple[int, float], list], base: dict[tuple[int, float], float], me: int) -> None:
    """Record every process's command line and CPU seconds so far (the largest seen)."""
    for p in psutil.process_iter(["pid", "create_time", "cmdline", "name", "cpu_times"]):
        info = p.info
        if info["pid"] == me or info["cpu_times"] is None:
            continue
        key = (info["pid"], info["create_time"])
        cpu = cpu_seconds(info["cpu_times"]) - base.get(key, 0.0)
        cmd = " ".join(" ".join(info["cmdline"] or []).split()) or f"[{info['name']}]"  # one line
        entry = seen.setdefault(key, [cmd, 0.0])
        entry[0] = cmd if len(cmd) > len(entry[0]) else entry[0]  # a process's args can appear after its start
        entry[1] = max(entry[1], cpu)


def busy(before: Any, after: Any) -> float:
    """The share of all cores' time that was not idle between the two readings."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    return 1 - idle / total if total > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12, help="Busiest command lines to list.")
    parser.add_argument("--interval", type=float, default=1.0, help="Seconds between samples.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The command to run, after --.")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- .venv/bin/sslpipe run --smoke")

    print(f"cpu:         {cpu_model()}, {psutil.cpu_count()} logical cores; load average before: {load_average()}")
    print(f"command:     {' '.join(command)}")
    base = {(p.info["pid"], p.info["create_time"]): cpu_seconds(p.info["cpu_times"])
            for p in psutil.process_iter(["pid", "create_time", "cpu_times"]) if p.info["cpu_times"] is not None}
    me = psutil.Process().pid
    seen: dict[tuple[int, float], list] = {}
    cores_before, start = psutil.cpu_times(), time.perf_counter()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        sample(seen, base, me)
        time.sleep(args.interval)
    sample(seen, base, me)
    wall, share = time.perf_counter() - start, busy(cores_before, psutil.cpu_times())

    by_kind, by_cmd = Counter(), Counter()
    for cmd, cpu in seen.values():
        by_kind[kind(cmd)] += cpu
        by_cmd[cmd[:110]] += cpu
    total = sum(by_kind.values())
    print(f"\nwall {wall:.0f} s, exit code {proc.returncode}; the machine's cores {share:.0%} busy over the run; "
          f"{total:.0f} CPU-seconds sampled in {len(seen)} processes\n")
    print("| kind of process | CPU s | share |\n|---|---|---|")
    for name, cpu in by_kind.most_common():
        if cpu >= 0.05:
            print(f"| {name} | {cpu:,.1f} | {cpu / max(total, 1e-9):.1%} |")
    print("\n| busiest command lines (processes with the same line summed) | CPU s |\n|---|---|")
    for cmd, cpu in by_cmd.most_common(args.top):
        if cpu < 0.05:
            break
        print(f"| `{cmd.replace('|', '/')}` | {cpu:,.1f} |")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
