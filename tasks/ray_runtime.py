"""Ray start-up, one way for every stage that uses Ray (tune's trials, Ray Train's workers): join the
cluster at ``RAY_ADDRESS`` when it is set (Ray's own convention), else start a local instance sized
for the job. A stage that started Ray stops it; one that joined a cluster only disconnects."""

from __future__ import annotations

import math
import os
from typing import Any


def on_cluster() -> bool:
    """True when ``RAY_ADDRESS`` names a cluster to join (a stage then neither sizes nor stops it)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(num_cpus: float, num_gpus: int) -> bool:
    """Connect to ``RAY_ADDRESS``'s cluster, or start a local Ray with ``num_cpus`` (rounded up, at
    least 1) and ``num_gpus``.

    Returns:
        True when this call started or joined Ray (the caller calls ``ray.shutdown()`` when done:
        a local Ray stops, a cluster runs on); False when Ray was already up (the caller's: left
        running).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not on_cluster():  # a local Ray instance sized to the job
        kwargs["num_cpus"] = max(math.ceil(num_cpus), 1)
        kwargs["num_gpus"] = num_gpus
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, **kwargs)
    return True
