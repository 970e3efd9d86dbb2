"""The plan a run says before it starts: the stale stages, and minutes by the last timings of a
run of the same kind (smoke or not)."""

from __future__ import annotations

import pytest

import flows.run_plan as run_plan

STAGES = ("sources", "ingest", "validate", "pretrain")


@pytest.fixture
def stale(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[str]:
    monkeypatch.chdir(tmp_path)
    names: list[str] = []
    monkeypatch.setattr(run_plan, "stale_stages", lambda stages: ["sources", *names])
    return names


def test_nothing_stale(stale: list[str]) -> None:
    assert "up to date" in run_plan.plan(STAGES, smoke=False)


def test_untimed_then_timed_by_kind(stale: list[str]) -> None:
    stale += ["pretrain"]
    assert "not timed here yet" in run_plan.plan(STAGES, smoke=False)
    run_plan.record_timings([{"stage": "pretrain", "status": "ran", "seconds": 600.0},
                             {"stage": "ingest", "status": "cached"}], smoke=False)
    message = run_plan.plan(STAGES, smoke=False)
    assert message.startswith("will run sources, pretrain (2 of 4 stages") and "about 10 min" in message
    assert "not timed here yet" in run_plan.plan(STAGES, smoke=True)  # a smoke run is timed apart
    stale += ["validate"]
    assert "plus validate (not timed yet)" in run_plan.plan(STAGES, smoke=False)
