"""Combinators that run sub-protocols in sequence: a job of many rounds, each round
its own protocol instance (e.g. its own SecAgg+ session with fresh keys and graph).

The coordinator side leads: it opens round ``r`` by sending every party of the
round a ``r{r}/begin`` message naming the round's parties (those not dropped so
far) and optional round data (e.g. the current global model), then runs the
round's party with every stage namespaced ``r{r}/<stage>``. Followers (nodes, the
analyst) build their round party when the begin message arrives. A message for a
round already closed is ignored (a slow party's late answer); one for a round not
yet opened is refused.

    Rounds(50, lambda r, parties: SecAggServer(config(f"{job}/r{r}", parties), ...))

Each round's graph and keys are independent because each round is a separate
protocol instance; what binds them into one job is only the coordinator's order.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    LocalEvent,
    NodeParty,
    NodeUsage,
    Outbound,
    Party,
    Progress,
)

BEGIN: Final = "begin"
MAX_ROUNDS: Final = 100_000
_MAX_BEGIN_BYTES: Final = 64 << 20
_STAGE = re.compile(r"r(\d{1,6})/(.+)", re.DOTALL)


@dataclass(frozen=True)
class RoundBegin:
    """What a follower learns when a round opens: its number, parties and data."""

    round: int
    parties: tuple[str, ...]
    data: bytes = b""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "round": self.round,
                "parties": list(self.parties),
                "data": base64.b64encode(self.data).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, payload: bytes, expected_round: int) -> RoundBegin:
        if len(payload) > _MAX_BEGIN_BYTES:
            raise ProtocolError("round begin message is too large")
        try:
            raw = json.loads(payload)
            number, parties = raw["round"], raw["parties"]
            data = base64.b64decode(raw["data"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError("malformed round begin message") from exc
        if number != expected_round:
            raise ProtocolError(
                f"round begin says round {number}, not {expected_round}"
            )
        if not isinstance(parties, list) or not all(
            isinstance(p, str) for p in parties
        ):
            raise ProtocolError("round begin message has a malformed party list")
        return cls(number, tuple(parties), data)


def prefix(round_: int, outbound: Sequence[Outbound]) -> list[Outbound]:
    """Namespace a round party's messages: ``stage`` becomes ``r{round}/stage``."""
    return [Outbound(o.recipient, f"r{round_}/{o.stage}", o.payload) for o in outbound]


def split_stage(stage: str) -> tuple[int, str]:
    """``r7/secagg/masked`` -> (7, ``secagg/masked``); ProtocolError otherwise."""
    match = _STAGE.fullmatch(stage)
    if match is None:
        raise ProtocolError(f"stage '{stage[:80]}' names no round")
    return int(match.group(1)), match.group(2)


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise ProtocolError("the number of rounds must be an integer")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ProtocolError(f"the number of rounds must be in [1, {MAX_ROUNDS}]")


class CoordinatorRounds(CoordinatorParty):
    """Runs ``rounds`` coordinator parties one after another.

    ``make_round(r, parties)`` builds round ``r``'s party for the parties still in
    the job; ``begin_data(r, results)`` is the data every party gets with round
    ``r``'s begin message, computed from the earlier rounds' results;
    ``round_result(r, party)`` what is kept of a finished round (default: its
    ``result()``); ``combine(results)`` the job's released result. A party dropped
    in one round is left out of every later round; fewer than ``min_parties``
    remaining ends the job.
    """

    def __init__(
        self,
        rounds: int,
        parties: Sequence[str],
        make_round: Callable[[int, tuple[str, ...]], CoordinatorParty],
        *,
        combine: Callable[[list[Any]], Mapping[str, Any]],
        begin_data: Callable[[int, list[Any]], bytes] = lambda r, results: b"",
        round_result: Callable[[int, CoordinatorParty], Any] | None = None,
        min_parties: int = 1,
        followers: Sequence[str] = (),
    ) -> None:
        _check_rounds(rounds)
        self._rounds = rounds
        self._parties = tuple(parties)
        self._followers = tuple(followers)
        self._make = make_round
        self._combine = combine
        self._begin_data = begin_data
        self._round_result = round_result or (lambda r, p: p.result())
        self._min_parties = min_parties
        self._gone: set[str] = set()
        self._round = -1
        self._current: CoordinatorParty | None = None
        self._current_parties: tuple[str, ...] = ()
        self._results: list[Any] = []
        self._started = False

    @property
    def current_round(self) -> int:
        return self._round

    @property
    def gone(self) -> frozenset[str]:
        return frozenset(self._gone)

    def start(self) -> list[Outbound]:
        if self._started:
            raise ProtocolError("the rounds have already started")
        self._started = True
        return self._open_next()

    def _open_next(self) -> list[Outbound]:
        out: list[Outbound] = []
        while True:
            self._round += 1
            if self._round >= self._rounds:
                self._current = None
                return out
            parties = tuple(p for p in self._parties if p not in self._gone)
            if len(parties) < self._min_parties:
                raise ProtocolAbort(
                    f"only {len(parties)} parties remain for round {self._round + 1}"
                )
            begin = RoundBegin(
                self._round, parties, self._begin_data(self._round, self._results)
            )
            payload = begin.encode()
            for party in (*parties, *self._followers):
                out.append(Outbound(party, f"r{self._round}/{BEGIN}", payload))
            self._current_parties = parties
            self._current = self._make(self._round, parties)
            out += prefix(self._round, self._current.start())
            if not self._current.finished:
                return out
            self._results.append(self._round_result(self._round, self._current))

    def _after(self, out: list[Outbound]) -> list[Outbound]:
        current = self._current
        if current is not None and current.finished:
            self._results.append(self._round_result(self._round, current))
            out += self._open_next()
        return out

    def receive(self, message: Inbound) -> list[Outbound]:
        number, stage = split_stage(message.stage)
        if number < self._round:
            return []  # a late answer to a closed round changes nothing
        if number > self._round or self._current is None:
            raise ProtocolError(f"a message for round {number + 1}, not yet open")
        out = self._current.receive(Inbound(message.sender, stage, message.payload))
        return self._after(prefix(number, out))

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        new = parties - self._gone
        self._gone |= parties
        current = self._current
        if current is None:
            return []
        in_round = frozenset(new & set(self._current_parties))
        if not in_round:
            return []
        out = prefix(self._round, current.dropped(in_round))
        return self._after(out)

    def waiting_for(self) -> frozenset[str]:
        return frozenset() if self._current is None else self._current.waiting_for()

    def progress(self) -> Progress:
        inner = Progress() if self._current is None else self._current.progress()
        return Progress(
            stage=inner.stage,
            round=max(self._round, 0) if self._round < self._rounds else None,
            rounds=self._rounds,
            heard=inner.heard,
            expected=inner.expected,
            done=inner.done,
            total=inner.total,
            unit=inner.unit,
        )

    @property
    def finished(self) -> bool:
        return self._started and self._round >= self._rounds

    @property
    def results(self) -> list[Any]:
        return list(self._results)

    def result(self) -> Mapping[str, Any]:
        if not self.finished:
            raise ProtocolError("the rounds have not finished")
        return self._combine(self._results)


class FollowerRounds(Party):
    """A node's or the analyst's side of ``CoordinatorRounds``.

    ``make_round(begin)`` builds the party for the round that opens. A begin for a
    later round abandons the current one: the coordinator closed it without
    needing this party any further.
    """

    def __init__(
        self, rounds: int, make_round: Callable[[RoundBegin], Party], *, name: str
    ) -> None:
        _check_rounds(rounds)
        self._rounds = rounds
        self._make = make_round
        self._name = name
        self._round = -1
        self._current: Party | None = None
        self._done: set[int] = set()
        self._history: list[Party] = []

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        number, stage = split_stage(message.stage)
        if stage == BEGIN and message.sender == COORDINATOR:
            return self._begin(number, message.payload)
        if number < self._round or (number == self._round and number in self._done):
            return []
        if number > self._round or self._current is None:
            raise ProtocolError(f"a message for round {number + 1}, not yet open")
        out = prefix(
            number,
            self._current.receive(Inbound(message.sender, stage, message.payload)),
        )
        if self._current.finished:
            self._done.add(number)
        return out

    def _begin(self, number: int, payload: bytes) -> list[Outbound]:
        if number <= self._round or number >= self._rounds:
            raise ProtocolError(f"round {number + 1} cannot open now")
        begin = RoundBegin.decode(payload, number)
        if self._name not in begin.parties:
            raise ProtocolAbort(f"left out of round {number + 1} by the coordinator")
        self._round = number
        self._current = self._make(begin)
        self._history.append(self._current)
        out = prefix(number, self._current.start())
        if self._current.finished:
            self._done.add(number)
        return out

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._current is None or self._round in self._done:
            if COORDINATOR in parties:
                raise ProtocolAbort("the coordinator went away")
            return []
        return prefix(self._round, self._current.dropped(parties))

    def local_event(self, event: LocalEvent) -> list[Outbound]:
        if self._current is None:
            raise ProtocolError("no round is open")
        return prefix(self._round, self._current.local_event(event))

    def waiting_for(self) -> frozenset[str]:
        if self._current is None or self._round in self._done:
            return frozenset({COORDINATOR})
        return self._current.waiting_for()

    def progress(self) -> Progress:
        inner = Progress() if self._current is None else self._current.progress()
        return Progress(
            stage=inner.stage,
            round=max(self._round, 0),
            rounds=self._rounds,
            heard=inner.heard,
            expected=inner.expected,
            done=inner.done,
            total=inner.total,
            unit=inner.unit,
        )

    @property
    def finished(self) -> bool:
        return self._round == self._rounds - 1 and self._round in self._done

    @property
    def round_parties(self) -> list[Party]:
        """Every round's party so far, oldest first (for usage and results)."""
        return list(self._history)


class NodeRounds(FollowerRounds, NodeParty):
    """A node's rounds; usage is the sum over every round it took part in."""

    def usage(self) -> NodeUsage:
        rows, epsilon, delta = 0, 0.0, 0.0
        units: dict[str, float] = {}
        for party in self.round_parties:
            if isinstance(party, NodeParty):
                used = party.usage()
                rows = max(rows, used.rows_touched)
                epsilon += used.epsilon
                delta += used.delta
                for unit, amount in used.units.items():
                    units[unit] = units.get(unit, 0.0) + amount
        return NodeUsage(rows_touched=rows, epsilon=epsilon, delta=delta, units=units)
