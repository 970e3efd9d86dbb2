"""``sslpipe compare``'s table: pipeline runs side by side -- the params that differ, the key
metrics, the duration."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.table import Table

from tasks.metrics import HEADLINE_METRICS

def duration_s(run: Any) -> float | None:
    end = run.info.end_time
    return (end - run.info.start_time) / 1000 if end else None


def differing_params(runs: list[Any]) -> list[str]:
    keys = sorted(set().union(*(r.data.params for r in runs)))
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def compare_table(runs: list[Any]) -> Table:
    """One column per run; rows: when, duration, status, code/data, params that differ, metrics."""
    table = Table(title=f"{len(runs)} runs", show_lines=False)
    table.add_column("", style="bold")
    for r in runs:
        table.add_column(f"{r.info.run_name or ''}\n{r.info.run_id[:8]}", justify="right")

    def row(label: str, values: list[str], style: str | None = None) -> None:
        table.add_row(label, *values, style=style)

    row("started", [dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M") for r in runs])
    row("duration", [f"{d:.0f} s" if (d := duration_s(r)) is not None else "running" for r in runs])
    row("status", [r.info.status.lower() for r in runs])
    for tag in ("git.commit", "data.version", "prefect.flow_run_id"):
        row(tag, [str(r.data.tags.get(tag, "-"))[:12] for r in runs])
    diff = differing_params(runs)
    table.add_section()
    if not diff:
        row("params", ["identical" for _ in runs], style="dim")
    for key in diff:
        row(key, [str(r.data.params.get(key, "-")) for r in runs], style="yellow")
    table.add_section()
    names = [k for k in HEADLINE_METRICS if any(k in r.data.metrics for r in runs)]
    names += sorted(k for k in set().union(*(r.data.metrics for r in runs))
                    if k.startswith("frac_") and k.endswith("_top1") and k not in names)
    for key in names:
        values = [r.data.metrics.get(key) for r in runs]
        best = max((v for v in values if v is not None), default=None)
        row(key, [("-" if v is None else f"[green]{v:.4f}[/]" if v == best and len(runs) > 1 else f"{v:.4f}") for v in values])
    return table
