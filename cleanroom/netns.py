"""Separate hosts on one machine (root only): each party of a local federation in
its own Linux network namespace, joined by veth pairs to one bridge, with
addresses only inside those namespaces. Nodes only dial out to the coordinator's
address (they listen on nothing); the analyst reaches the coordinator from the
host through the bridge. ``cut``/``restore`` take one party's link down and up
(``ip link set down``), for fault tests.

Names carry a random tag, so federations of different users never collide:
namespaces ``cr-TAG-PARTY``, bridge ``crbTAG``, host-side veths ``crTAGvK``. The
bridge gets an iptables FORWARD accept rule (Docker's default FORWARD policy
drops bridged traffic when br_netfilter is loaded), removed with the rest.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.errors import ConfigError

FILE = "netns.json"


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ConfigError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _forward(action: str, bridge: str) -> None:
    subprocess.run(["iptables", action, "FORWARD", "-i", bridge, "-o", bridge,
                    "-j", "ACCEPT"], capture_output=True)  # fmt: skip


@dataclass
class Network:
    """One federation's namespaces, veths and bridge."""

    tag: str
    subnet: int
    """The third octet of 10.231.X.0/24."""
    parties: dict[str, int] = field(default_factory=dict)
    """Party -> its host number in the subnet (and its veth index)."""

    @classmethod
    def create(cls, parties: Sequence[str]) -> Network:
        if os.geteuid() != 0:
            raise ConfigError("--netns needs root (it creates network namespaces)")
        tag = secrets.token_hex(2)
        net = cls(tag, 1 + secrets.randbelow(250))
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{net.address_of_host()}/24", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
            _forward("-I", net.bridge)
            for k, party in enumerate(parties):
                net.parties[party] = 10 + k
                ns, host, peer = net.namespace(party), net.veth(party), f"cr{tag}p{k}"
                _ip("netns", "add", ns)
                _ip("link", "add", host, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", ns)
                _ip("link", "set", host, "master", net.bridge, "up")
                _ip("-n", ns, "link", "set", peer, "name", "eth0")
                _ip("-n", ns, "addr", "add", f"{net.address(party)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            net.destroy()
            raise
        return net

    @property
    def bridge(self) -> str:
        return f"crb{self.tag}"

    def namespace(self, party: str) -> str:
        return f"cr-{self.tag}-{party}"

    def veth(self, party: str) -> str:
        return f"cr{self.tag}v{self.parties[party] - 10}"

    def address(self, party: str) -> str:
        return f"10.231.{self.subnet}.{self.parties[party]}"

    def address_of_host(self) -> str:
        return f"10.231.{self.subnet}.1"

    def exec_prefix(self, party: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(party)]

    def cut(self, party: str) -> None:
        """Take the party's link down: nothing reaches it, nothing leaves it."""
        _ip("link", "set", self.veth(party), "down")

    def restore(self, party: str) -> None:
        _ip("link", "set", self.veth(party), "up")

    def destroy(self) -> None:
        for party in self.parties:
            _ip("link", "del", self.veth(party), check=False)
            _ip("netns", "del", self.namespace(party), check=False)
        _ip("link", "del", self.bridge, check=False)
        _forward("-D", self.bridge)

    def save(self, workdir: Path) -> None:
        doc = {"tag": self.tag, "subnet": self.subnet, "parties": self.parties}
        (workdir / FILE).write_text(json.dumps(doc) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Network | None:
        try:
            doc = json.loads((workdir / FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(str(doc["tag"]), int(doc["subnet"]),
                   {str(k): int(v) for k, v in doc["parties"].items()})  # fmt: skip
