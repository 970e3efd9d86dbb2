"""A second host on this machine: a network namespace joined to this one by a veth pair, each end
with an address of its own (10.231.K.1 here, 10.231.K.2 in the namespace), so that two Ray nodes
talk over a link between two network stacks rather than over loopback. Needs root and iproute2;
``open_link`` returns None where the machine does not allow it, and the caller stays on loopback.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass

SUBNET = "10.231"  # private; K (the third byte) is picked free, so parallel test sessions don't clash


@dataclass(frozen=True)
class Link:
    """A namespace ``name`` reached at ``guest_ip``; this machine's end of the link is ``host_ip``.
    ``host_dev`` and ``guest_dev`` name the two ends' interfaces (what GLOO_SOCKET_IFNAME takes)."""

    name: str
    host_ip: str
    guest_ip: str
    host_dev: str
    guest_dev: str

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def pids(self) -> list[int]:
        """The processes running inside the namespace."""
        out = _ip("netns", "pids", self.name)
        return [int(p) for p in out.stdout.split()]


def _ip(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def open_link() -> Link | None:
    """Create a namespace and its veth link, both ends up; None where that is not allowed."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return None
    used = _ip("-o", "-4", "addr").stdout
    for k in random.sample(range(256), 256):
        if f" {SUBNET}.{k}." in used:
            continue
        name = f"sslray{k}"
        made = _ip("netns", "add", name)
        if made.returncode != 0:
            if "exists" in made.stderr:  # another session's: try the next K
                continue
            return None  # not allowed here (no CAP_NET_ADMIN, no netns support)
        host_end, guest_end = f"vh{name[6:]}-{os.getpid() % 10000}", f"vg{name[6:]}-{os.getpid() % 10000}"
        link = Link(name, f"{SUBNET}.{k}.1", f"{SUBNET}.{k}.2", host_end, guest_end)
        try:
            _ip("link", "add", host_end, "type", "veth", "peer", "name", guest_end, check=True)
            _ip("link", "set", guest_end, "netns", name, check=True)
            _ip("addr", "add", f"{link.host_ip}/30", "dev", host_end, check=True)
            _ip("link", "set", host_end, "up", check=True)
            for args in (("addr", "add", f"{link.guest_ip}/30", "dev", guest_end), ("link", "set", guest_end, "up"),
                         ("link", "set", "lo", "up")):
                _ip("netns", "exec", name, "ip", *args, check=True)
        except subprocess.CalledProcessError:
            _ip("link", "del", host_end)
            close_link(link)
            return None
        return link
    return None


def close_link(link: Link) -> None:
    """Delete the namespace; its end of the veth pair goes with it, and so does this one."""
    _ip("netns", "del", link.name)
