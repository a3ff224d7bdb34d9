"""Separate hosts on one machine (root only): each party of a local federation in
its own Linux network namespace, joined by veth pairs to one bridge, with
addresses only inside those namespaces. The analyst reaches the coordinator from
the host through the bridge. ``cut``/``restore`` take one party's link down and
up (``ip link set down``); ``impair`` adds delay and loss to it (iptables'
``statistic`` match drops, ``cleanroom.netdelay`` holds arriving packets: this
kernel has no ``tc netem``).

Nodes reach only the coordinator, and nothing can open a connection to a node,
enforced in three places (``docs/deployment.md``):

- the bridge: every node's port is ``isolated``, so nodes exchange no frames
  with each other (only with the coordinator's port and the host);
- each node's namespace: its address is a /32 with one route, to the
  coordinator's address, and its firewall (iptables INPUT on ``eth0``) accepts
  only packets of connections the node opened;
- the host: packets arriving from the bridge are accepted only from the
  coordinator's address (the analyst's replies), so a node cannot reach the
  host either.

Names carry a random tag, so federations of different users never collide:
namespaces ``cr-TAG-PARTY``, bridge ``crbTAG``, host-side veths ``crTAGvK``. The
bridge gets an iptables FORWARD accept rule (Docker's default FORWARD policy
drops bridged traffic when br_netfilter is loaded), removed with the rest.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.errors import ConfigError

FILE = "netns.json"
HUB = "coordinator"
"""The one party every other party may reach."""


def _run(*args: str, check: bool = True) -> None:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True)
    except FileNotFoundError as exc:
        if not check:
            return
        raise ConfigError(f"--netns needs '{exc.filename}' (not found)") from exc
    if check and done.returncode != 0:
        raise ConfigError(f"{' '.join(args)} failed: {done.stderr.strip()}")


def _ip(*args: str, check: bool = True) -> None:
    _run("ip", *args, check=check)


@dataclass
class Network:
    """One federation's namespaces, veths and bridge."""

    tag: str
    subnet: int
    """The third octet of 10.231.X.0/24."""
    parties: dict[str, int] = field(default_factory=dict)
    """Party -> its host number in the subnet (and its veth index)."""
    delayers: dict[str, int] = field(default_factory=dict)
    """Party -> the pid of its ``cleanroom.netdelay`` process, while impaired."""
    _started: dict[str, subprocess.Popen[bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def create(cls, parties: Sequence[str]) -> Network:
        """Namespaces for ``parties``; every party but ``HUB`` is a node."""
        if os.geteuid() != 0:
            raise ConfigError("--netns needs root (it creates network namespaces)")
        if HUB not in parties:
            raise ConfigError(f"a network needs the party '{HUB}'")
        tag = secrets.token_hex(2)
        net = cls(tag, 1 + secrets.randbelow(250))
        net.parties = {party: 10 + k for k, party in enumerate(parties)}
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{net.address_of_host()}/24", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
            for rule in net._host_rules():
                _run("iptables", "-I", *rule)
            for party in parties:
                net._add_party(party)
        except BaseException:
            net.destroy()
            raise
        return net

    def _add_party(self, party: str) -> None:
        k = self.parties[party] - 10
        ns, host, peer = self.namespace(party), self.veth(party), f"cr{self.tag}p{k}"
        node = party != HUB
        _ip("netns", "add", ns)
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", host, "master", self.bridge, "up")
        if node:
            _run("bridge", "link", "set", "dev", host, "isolated", "on")
        _ip("-n", ns, "link", "set", peer, "name", "eth0")
        prefix = 32 if node else 24
        _ip("-n", ns, "addr", "add", f"{self.address(party)}/{prefix}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        if node:
            _ip("-n", ns, "route", "add", f"{self.address(HUB)}/32", "dev", "eth0")
            inside = ["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i"]
            _run(*inside, "eth0", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT")  # fmt: skip
            _run(*inside, "eth0", "-j", "DROP")

    def _host_rules(self) -> list[list[str]]:
        hub = self.address(HUB)
        return [
            ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"],
            ["INPUT", "-i", self.bridge, "!", "-s", hub, "-j", "DROP"],
        ]

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

    def impair(self, party: str, *, delay_ms: float = 0, loss: float = 0) -> None:
        """Every packet arriving at the party over its link waits ``delay_ms``
        (so a node-coordinator round trip takes ``2 * delay_ms`` more when both
        are impaired), and a fraction ``loss`` of packets is dropped each way."""
        self.unimpair(party)
        mangle = [*self.exec_prefix(party), "iptables", "-t", "mangle", "-A"]
        if loss > 0:
            drop = ["-m", "statistic", "--mode", "random", "--probability",
                    f"{loss:.6f}", "-j", "DROP"]  # fmt: skip
            _run(*mangle, "PREROUTING", "-i", "eth0", *drop)
            _run(*mangle, "OUTPUT", "-o", "eth0", *drop)
        if delay_ms > 0:
            proc = subprocess.Popen(
                [*self.exec_prefix(party), sys.executable, "-m", "cleanroom.netdelay",
                 "--delay-ms", str(delay_ms)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            self.delayers[party], self._started[party] = proc.pid, proc
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise ConfigError(f"the packet delayer for {party} did not start")
            proc.stdout.close()
            _run(*mangle, "PREROUTING", "-i", "eth0", "-j", "NFQUEUE",
                 "--queue-num", "0", "--queue-bypass")  # fmt: skip

    def unimpair(self, party: str) -> None:
        _run(*self.exec_prefix(party), "iptables", "-t", "mangle", "-F", check=False)
        pid, proc = self.delayers.pop(party, None), self._started.pop(party, None)
        if proc is not None:
            proc.kill()
            proc.wait()
        elif pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def destroy(self) -> None:
        """Remove everything, ending any process still inside a namespace (a
        packet delayer, a party that outlived its federation)."""
        for party in list(self.delayers):
            self.unimpair(party)
        for party in self.parties:
            pids = subprocess.run(["ip", "netns", "pids", self.namespace(party)],
                                  capture_output=True, text=True).stdout  # fmt: skip
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("link", "del", self.veth(party), check=False)
            _ip("netns", "del", self.namespace(party), check=False)
        _ip("link", "del", self.bridge, check=False)
        if HUB in self.parties:
            for rule in self._host_rules():
                _run("iptables", "-D", *rule, check=False)

    def save(self, workdir: Path) -> None:
        doc = {"tag": self.tag, "subnet": self.subnet, "parties": self.parties,
               "delayers": self.delayers}  # fmt: skip
        (workdir / FILE).write_text(json.dumps(doc) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Network | None:
        try:
            doc = json.loads((workdir / FILE).read_text())
        except FileNotFoundError:
            return None
        parties = {str(k): int(v) for k, v in doc["parties"].items()}
        delayers = {str(k): int(v) for k, v in doc.get("delayers", {}).items()}
        return cls(str(doc["tag"]), int(doc["subnet"]), parties, delayers)
