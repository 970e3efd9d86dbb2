"""What a pipeline run will do, said before it starts: the stages DVC finds stale, and about how
long they take, by the last time a run of the same kind (smoke or not) ran them here."""

from __future__ import annotations

from collections.abc import Sequence

from flows.dvc_runner import dvc_status
from tasks import paths
from tasks.io import read_json, write_json

TIMINGS = paths.STATE / "stage_seconds.json"  # {"smoke"|"full": {stage: seconds}}: the last time each ran


def stale_stages(stages: Sequence[str]) -> list[str]:
    """The ``stages`` DVC would run now, in order (``sources`` always runs in the flow)."""
    try:
        stale = set(dvc_status())
    except RuntimeError:  # the stages' own run says what is wrong
        stale = set(stages)
    return [s for s in stages if s in stale or s == "sources"]


def record_timings(outcomes: Sequence[dict], smoke: bool) -> None:
    """Remember how long each stage that ran took, for the next run's plan."""
    timings = read_json(TIMINGS) if TIMINGS.exists() else {}
    kind = timings.setdefault("smoke" if smoke else "full", {})
    kind.update({o["stage"]: round(o["seconds"], 1) for o in outcomes if o.get("status") == "ran"})
    write_json(TIMINGS, timings)


def plan(stages: Sequence[str], smoke: bool) -> str:
    """What a run will do and about how long it takes, said before it starts: the stale stages, and
    the minutes they took the last time a run of this kind (smoke or not) ran them here."""
    stale = stale_stages(stages)
    if stale == ["sources"]:
        return "DVC finds every stage up to date: nothing to recompute (the sources manifest is refreshed)"
    timed = (read_json(TIMINGS) if TIMINGS.exists() else {}).get("smoke" if smoke else "full", {})
    known = [timed[s] for s in stale if s in timed]
    untimed = [s for s in stale if s not in timed and s != "sources"]
    if not known:
        how_long = "not timed here yet (README: the default run takes about 17 min on 2 CPUs, --smoke 3-8)"
    else:
        how_long = f"about {max(1, round(sum(known) / 60))} min by the last timings here"
        if untimed:
            how_long += f", plus {', '.join(untimed)} (not timed yet)"
    return f"will run {', '.join(stale)} ({len(stale)} of {len(stages)} stages; DVC finds the others up to date): {how_long}"
