"""``sslpipe models``'s table: the registered versions, their aliases and key metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.table import Table


def versions_table(name: str, versions: list[Any], aliases_of: dict[str, list[str]]) -> Table:
    table = Table(title=f"registered model {name}")
    for col in ("version", "aliases", "created", "data version", "metrics", "run"):
        table.add_column(col, justify="right" if col == "version" else "left")
    for mv in versions:
        aliases = ", ".join(sorted(aliases_of.get(str(mv.version), [])))
        metrics = ", ".join(f"{k.removeprefix('metric.')} {float(v):.4f}" for k, v in sorted(mv.tags.items())
                            if k.startswith("metric."))
        scored = [f"top1 on {k.removeprefix('top1.data.')[:8]} {v}" for k, v in sorted(mv.tags.items())
                  if k.startswith("top1.data.")]
        table.add_row(
            str(mv.version),
            f"[bold green]{aliases}[/]" if "champion" in aliases else aliases,
            dt.datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M"),
            mv.tags.get("data.version", "-"),
            "\n".join([metrics, *scored]) if scored else metrics,
            (mv.run_id or "-")[:8],
        )
    return table
