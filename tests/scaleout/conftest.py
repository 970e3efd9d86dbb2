"""A real two-node Ray cluster on this machine, for tests of what runs across machines.

``ray_cluster`` starts a head (``--resources '{"head": 1}'``) and a second node
(``--resources '{"node2": 1}'``) with ``ray start``, one CPU each, each from a working directory and
a ``--temp-dir`` of its own, with token authentication on (a token of the fixture's own). Where the
machine allows it (root, iproute2), the second node runs in a network namespace of its own, joined
by a veth link, each node with its own address: two hosts as far as Ray can tell (``tests/scaleout/
netns.py``); elsewhere (or with SSLPIPE_TEST_RAY_LOOPBACK=1) both nodes share 127.0.0.1. It yields a ``RayCluster``: the address, the
environment a driver needs, each node's id and address. Teardown stops exactly
this cluster's processes -- every process in the sessions its two ``ray start`` commands opened --
never a bare ``ray stop``, which would end every Ray instance of the machine (other tests' too,
under pytest-xdist), and fails if one survives.

Use it from a test as a user would use a cluster: run the driver (``sslpipe``, a script) in a
subprocess with ``env=ray_cluster.driver_env()``, and read ``ray_cluster.node_ids`` to check where
work ran. Each node has one CPU (plus its label), so a job of two 1-CPU workers gets one per node.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import VENV_BIN, subprocess_env
from tests.scaleout.netns import Link, close_link, open_link
from tests.tasks.conftest import fashion_dir, pretrained_template  # noqa: F401 (fixtures, reused)

LABELS = ("head", "node2")  # each node's custom resource, which names it
START_TIMEOUT_S = 240  # `ray start` took ~40 s on 2 busy cores; a join waits for the head's GCS

# Asks the cluster at RAY_ADDRESS for its live nodes until both labeled ones are up; prints their
# ids and addresses.
_PROBE = """
import json, time, ray
ray.init(log_to_driver=False, configure_logging=False)
deadline = time.monotonic() + 120
while True:
    ids = {label: [n["NodeID"], n["NodeManagerAddress"]] for n in ray.nodes() if n["Alive"]
           for label in %r if label in n["Resources"]}
    if len(ids) == %d or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(ids))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    """A running two-node cluster: what a test needs to use it and the fixture needs to stop it."""

    address: str  # the GCS address, as `ray start --address` and RAY_ADDRESS take it
    env: dict[str, str]  # what a driver (`sslpipe`, a Ray script) needs: RAY_ADDRESS and the auth token
    root: Path  # the nodes' working and temp dirs
    ips: dict[str, str]  # "head" / "node2" -> the node's address
    link: Link | None = None  # node2's network namespace, where the machine allows one
    node_ids: dict[str, str] = field(default_factory=dict)  # "head" / "node2" -> Ray node id
    sessions: list[int] = field(default_factory=list)  # the session ids of the nodes' processes

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (raylets, GCS, agents, workers): those in the
        sessions its `ray start` commands opened; Ray's processes never leave their session."""
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment for a driver process (``sslpipe``, python) that uses this cluster."""
        return subprocess_env(**self.env, **extra)


def _ray_start(cluster: RayCluster, label: str, *args: str) -> None:
    """``ray start`` one node, labeled ``label``, in a session of its own (its daemons stay in it);
    node2 inside the namespace, when there is one."""
    cwd, temp = cluster.root / f"{label}-cwd", cluster.root / label
    cwd.mkdir()
    prefix = cluster.link.exec_prefix() if cluster.link and label != "head" else []
    env = subprocess_env(**cluster.env)
    if cluster.link:  # this machine's hostname resolves to 127.0.0.1: gloo binds the node's own link, as on
        # hosts whose /etc/hosts maps the hostname to loopback (torch's GLOO_SOCKET_IFNAME; workers inherit it)
        env["GLOO_SOCKET_IFNAME"] = cluster.link.host_dev if label == "head" else cluster.link.guest_dev
    cmd = [*prefix, str(VENV_BIN / "ray"), "start", *args, "--node-ip-address", cluster.ips[label], "--num-cpus", "1",
           "--resources", json.dumps({label: 1}), "--temp-dir", str(temp), "--disable-usage-stats",
           "--dashboard-agent-listen-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
           "--metrics-export-port", str(free_port())]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    cluster.sessions.append(proc.pid)
    try:
        out, _ = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"ray start ({label}) failed ({proc.returncode}):\n{out[-4000:]}"
    assert list(temp.glob("session_*")), f"ray start ({label}) made no session under its --temp-dir {temp}"


def _live_nodes(cluster: RayCluster) -> dict[str, list[str]]:
    probe = subprocess.run([str(VENV_BIN / "python"), "-c", _PROBE % (LABELS, len(LABELS))], cwd=cluster.root,
                           env=cluster.driver_env(), capture_output=True, text=True, timeout=240)
    assert probe.returncode == 0, f"the cluster did not answer:\n{probe.stderr[-4000:]}"
    return json.loads(probe.stdout.strip().splitlines()[-1])


def stop_cluster(cluster: RayCluster, grace_s: float = 5) -> list[psutil.Process]:
    """Stop this cluster as `ray stop` would, but only its processes: raylets first (their agents
    and workers follow them), then what is left (GCS, monitors, dashboard). Returns the processes
    still alive afterwards: none, unless something is wrong."""
    _terminate([p for p in cluster.processes() if "raylet" in _name(p)], grace_s)
    _terminate(cluster.processes(), grace_s)
    return cluster.processes()


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM, and SIGKILL for what outlives ``grace_s`` (the autoscaler monitor ignores SIGTERM
    for ~20 s; `ray stop` waits 16 s, a test need not)."""
    for p in procs:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:1]) or proc.name()
    except psutil.Error:
        return ""


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A head and a second node, both alive; stopped (every process) at the end."""
    # short: Ray's Unix sockets live under the temp dir, and a socket path has at most 107 bytes
    root = Path(tempfile.mkdtemp(prefix="sslray-", dir="/tmp"))
    link = None if os.environ.get("SSLPIPE_TEST_RAY_LOOPBACK") == "1" else open_link()
    ips = {"head": link.host_ip, "node2": link.guest_ip} if link else {"head": "127.0.0.1", "node2": "127.0.0.1"}
    port = free_port()
    address = f"{ips['head']}:{port}"
    env = {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = RayCluster(address=address, env=env, root=root, ips=ips, link=link)
    try:
        _ray_start(cluster, "head", "--head", "--port", str(port), "--include-dashboard", "false",
                   "--dashboard-port", str(free_port()))
        _ray_start(cluster, "node2", "--address", address)
        nodes = _live_nodes(cluster)
        assert set(nodes) == set(LABELS), f"live labeled nodes: {nodes}"
        if link:  # two network stacks: each node at its own address (on loopback Ray may report the host's)
            assert {label: ip for label, (_, ip) in nodes.items()} == ips, f"live labeled nodes: {nodes}"
        cluster.node_ids = {label: node_id for label, (node_id, _) in nodes.items()}
        yield cluster
    finally:
        left = stop_cluster(cluster)
        in_netns = link.pids() if link else []
        if link:
            close_link(link)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the Ray cluster survived its teardown: {[(p.pid, _name(p)) for p in left]}"
        assert not in_netns, f"processes left in network namespace {link.name}: {in_netns}"


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the marker into the test's group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, every test on the cluster runs in one worker, which starts it once."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray_cluster"))
