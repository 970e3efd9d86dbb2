"""``sslpipe models``: the registered versions, their aliases and key metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.table import Table


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
