"""The ``secure_stats`` parties: two sealed SecAgg+ rounds. The nodes share two
seeds the coordinator never sees; the counts round, masked with the nodes' seed,
tells each node every cell's pooled count, which it checks (``SealedSum``) before
deciding which cells pass its own minimum group size; the values round carries
only the cells every node passed, masked with the values' seed, which only the
nodes and the analyst hold. The coordinator unmasks both sums but can read
neither, nor change either undetected; it releases the values round's sealed sum
as an attachment, and the analyst's party opens it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolAbort, ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.stats import cells as C
from cleanroom.jobtypes.stats import pushdown
from cleanroom.jobtypes.stats.encode import add_noise, cell_partitions, to_ring
from cleanroom.jobtypes.stats.layout import Layout
from cleanroom.jobtypes.stats.release import release
from cleanroom.jobtypes.tables import FrameTable, table_of
from cleanroom.keys import canonical_json
from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)
from protocols.prg import MaskVector
from protocols.sealed_sum import DEFAULT_CHECKS, SealedSum
from protocols.secagg import MASKED_INPUT, SecAggClient, SecAggConfig, SecAggServer
from protocols.secagg.keys import identity_keys

SUM_ATTACHMENT: Final = "sealed-sum"
_MAX_POLICY_BYTES: Final = 256


def leader(parties: Sequence[str]) -> str:
    """The node that draws the job's seeds: the first input by name."""
    return min(parties)


def session(job_id: str, round_: str) -> str:
    return f"{job_id}/{round_}"


def secagg_config(
    job_id: str, round_: str, parties: Sequence[str], length: int, threshold: int | None
) -> SecAggConfig:
    """The one SecAgg+ configuration every party of a round derives."""
    return SecAggConfig.create(
        session_id=session(job_id, round_),
        parties=parties,
        vector_length=length,
        threshold=threshold,
        modulus_bits=64,
    )


def sealer(seed: bytes, job_id: str, round_: str, length: int) -> SealedSum:
    return SealedSum(seed, session(job_id, round_), length)


def _strip(stage: str, round_: str) -> str | None:
    prefix = round_ + "/"
    return stage[len(prefix) :] if stage.startswith(prefix) else None


def _prefix(round_: str, outbound: Sequence[Outbound]) -> list[Outbound]:
    return [Outbound(o.recipient, f"{round_}/{o.stage}", o.payload) for o in outbound]


# ----------------------------------------------------------------- nodes --
class StatsNode(NodeParty):
    """Summarises the node's rows once (with its noise share), then takes part in
    both rounds, checking the counts round's sum before it offers any value."""

    def __init__(self, ctx: NodeContext, layout: Layout) -> None:
        self._ctx = ctx
        self._layout = layout
        self._full: MaskVector | None = None
        self._seeds: tuple[bytes, bytes] | None = None
        self._round = ""
        self._client: SecAggClient | None = None
        self._counts_survivors: frozenset[str] = frozenset()
        self._own_pass: tuple[int, ...] = ()
        self._agreed: tuple[int, ...] | None = None
        self._values_survivors: frozenset[str] = frozenset()
        self._sent_values = False
        self._done = False

    @property
    def _cells(self) -> int:
        return len(C.cells(self._layout))

    def start(self) -> list[Outbound]:
        ctx, layout = self._ctx, self._layout
        if self._full is not None:
            raise ProtocolError(f"{ctx.node} has already started")
        exact = pushdown.contribution(layout, table_of(ctx))
        self._full = to_ring(layout, add_noise(layout, exact, ctx.random))
        policy = canonical_json({"min_group_size": ctx.min_group_size})
        out = [Outbound(COORDINATOR, C.POLICY, policy)]
        if ctx.node == leader(ctx.parties):
            nodes, values = ctx.random(32), ctx.random(32)
            body = C.dump({"nodes": nodes.hex(), "values": values.hex()})
            out += [Outbound(p, C.SEED, body) for p in ctx.parties if p != ctx.node]
            out.append(
                Outbound(ANALYST, C.ANALYST_SEED, C.dump({"values": values.hex()}))
            )
            out += self._begin_counts((nodes, values))
        return out

    def _begin_counts(self, seeds: tuple[bytes, bytes]) -> list[Outbound]:
        ctx, layout = self._ctx, self._layout
        assert self._full is not None
        self._seeds = seeds
        vector = sealer(seeds[0], ctx.job_id, C.COUNTS, self._cells).seal(
            ctx.node, C.counts_vector(layout, self._full)
        )
        return self._secagg(C.COUNTS, ctx.parties, vector, self._approve_counts)

    def _secagg(
        self,
        round_: str,
        parties: Sequence[str],
        vector: MaskVector,
        approve: Any,
    ) -> list[Outbound]:
        ctx = self._ctx
        self._round = round_
        self._client = SecAggClient(
            ctx.node,
            secagg_config(ctx.job_id, round_, parties, len(vector),
                          self._layout.params.threshold),
            vector,
            signing_key=ctx.signing_key,
            peer_signing_keys=identity_keys(ctx.peer_signing_keys),
            random=ctx.random,
            approve_survivors=approve,
        )  # fmt: skip
        return _prefix(round_, self._client.start())

    def _approve_counts(self, survivors: frozenset[str]) -> None:
        self._ctx.inputs_guard(survivors)
        self._counts_survivors = survivors

    def _approve_values(self, survivors: frozenset[str]) -> None:
        if survivors != self._counts_survivors:
            raise ProtocolAbort(
                "the inputs changed between the counts and the values round; "
                "nothing is released"
            )
        self._ctx.inputs_guard(survivors)
        self._values_survivors = survivors

    def receive(self, message: Inbound) -> list[Outbound]:
        stage = message.stage
        if stage == C.SEED:
            return self._on_seeds(message)
        if stage == C.COUNTS_SUM and message.sender == COORDINATOR:
            return self._on_counts_sum(message.payload)
        if stage == C.VALUES_BEGIN and message.sender == COORDINATOR:
            return self._on_values_begin(message.payload)
        inner = _strip(stage, self._round) if self._round else None
        if inner is None or self._client is None:
            raise ProtocolError(f"{self._ctx.node} expects no '{stage}' now")
        out = self._client.receive(Inbound(message.sender, inner, message.payload))
        if self._round == C.VALUES:
            self._sent_values |= any(o.stage == MASKED_INPUT for o in out)
            self._done = self._client.finished
        return _prefix(self._round, out)

    def _on_seeds(self, message: Inbound) -> list[Outbound]:
        ctx = self._ctx
        if message.sender != leader(ctx.parties) or self._seeds is not None:
            raise ProtocolError(f"unexpected seeds from '{message.sender}'")
        body = C.load(message.payload, "seeds")
        try:
            seeds = (bytes.fromhex(body["nodes"]), bytes.fromhex(body["values"]))
        except (KeyError, ValueError, TypeError):
            raise ProtocolError("malformed seeds") from None
        if any(len(s) != 32 for s in seeds):
            raise ProtocolError("malformed seeds")
        return self._begin_counts(seeds)

    def _on_counts_sum(self, payload: bytes) -> list[Outbound]:
        ctx, layout = self._ctx, self._layout
        if self._seeds is None or self._round != C.COUNTS or not self._counts_survivors:
            raise ProtocolError("the counts sum came before the counts round ended")
        body = C.load(payload, "counts sum")
        survivors = C.names(body.get("survivors"), ctx.parties, "survivor list")
        if frozenset(survivors) != self._counts_survivors:
            raise ProtocolError("the coordinator names other survivors than it did")
        seal = sealer(self._seeds[0], ctx.job_id, C.COUNTS, self._cells)
        total = C.ring_from_text(body.get("total"), seal.sealed_length)
        opened = seal.open(total, survivors)  # refuses a sum that does not verify
        counts = C.decode_counts(layout, opened, len(survivors))
        self._own_pass = self._guarded(C.passing(layout, counts, ctx.min_group_size))
        report = {"survivors": list(survivors), "passing": list(self._own_pass)}
        return [Outbound(COORDINATOR, C.PASSING, C.dump(report))]

    def _guarded(self, passing: Sequence[int]) -> tuple[int, ...]:
        """Without DP, the passing cells that the node's differencing record also
        allows (on the node's own rows of each cell); a group it refuses takes
        its bins with it."""
        layout = self._layout
        if layout.noise is not None or not passing:
            return tuple(passing)
        if self._ctx.table is not None and not isinstance(self._ctx.table, FrameTable):
            # An engine-backed dataset serves no row identities: no record can
            # be kept for it (docs/policy.md; holders require DP there).
            return tuple(passing)
        found = C.cells(layout)
        candidates = set(passing)
        partitions = cell_partitions(layout, self._ctx.data)
        keys: list[tuple[int, str | None, int | None]] = []
        for g in range(len(layout.params.group_keys)):
            keys.append((g, None, None))
        for column, edges in layout.params.edges.items():
            bins = len(edges) - 1
            keys += [(g, column, b) for g in range(len(layout.params.group_keys))
                     for b in range(bins)]  # fmt: skip
        position = {(c.group, c.column, c.bin): i for i, c in enumerate(found)}
        order = [position[k] for k in keys]
        # Only the cells about to be released are checked (and recorded): each
        # partition's labels are renumbered over its candidate cells.
        masked: list[tuple[npt.NDArray[np.int64], int]] = []
        checked: list[int] = []
        start = 0
        for names, labels in partitions:
            renumber = np.full(len(names) + 1, -1, dtype=np.int64)
            for j in range(len(names)):
                if order[start + j] in candidates:
                    renumber[j] = len(checked) - sum(c for _, c in masked)
                    checked.append(order[start + j])
            masked.append((renumber[labels], int((renumber >= 0).sum())))
            start += len(names)
        allowed = self._ctx.cells_guard(masked)
        ok = {cell for cell, a in zip(checked, allowed, strict=True) if a}
        groups_ok = {found[i].group for i in ok if found[i].bin is None}
        return tuple(i for i in passing if i in ok and found[i].group in groups_ok)

    def _on_values_begin(self, payload: bytes) -> list[Outbound]:
        ctx, layout = self._ctx, self._layout
        if (
            self._seeds is None
            or not self._counts_survivors
            or self._agreed is not None
        ):
            raise ProtocolError("the values round cannot begin now")
        body = C.load(payload, "values begin")
        agreed = C.indices(body.get("passing"), self._cells)
        if not set(agreed) <= set(self._own_pass):
            raise ProtocolError("the coordinator asks for cells this node did not pass")
        self._agreed = agreed
        assert self._full is not None
        vector = sealer(
            self._seeds[1], ctx.job_id, C.VALUES, layout.vector_length
        ).seal(ctx.node, C.values_vector(layout, self._full, agreed))
        return self._secagg(
            C.VALUES, sorted(self._counts_survivors), vector, self._approve_values
        )

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._client is None:
            if COORDINATOR in parties:
                raise ProtocolAbort("the coordinator went away")
            return []
        return _prefix(self._round, self._client.dropped(parties))

    def waiting_for(self) -> frozenset[str]:
        if self._done:
            return frozenset()
        if self._seeds is None:
            return frozenset({leader(self._ctx.parties)})
        return frozenset({COORDINATOR})

    def progress(self) -> Progress:
        return Progress(stage=f"{self._round or 'seeds'} round")

    @property
    def finished(self) -> bool:
        return self._done

    def usage(self) -> NodeUsage:
        """Rows read; epsilon is spent once the noised values have been sent."""
        privacy = self._layout.params.privacy
        spent = privacy.epsilon if privacy is not None and self._sent_values else 0.0
        rows = table_of(self._ctx).rows if self._full is not None else 0
        return NodeUsage(rows_touched=rows, epsilon=spent)

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """The survivors and the cells this node agreed to release; the sum itself
        is sealed: the analyst's party checks it."""
        if self._agreed is None:
            raise ProtocolError("the values round never began here")
        survivors = sorted(self._values_survivors)
        suppressed = C.suppressed_groups(self._layout, self._agreed)
        checked = {
            "/survivors": survivors,
            "/dropped": sorted(set(self._ctx.parties) - set(survivors)),
            "/passing": list(self._agreed),
            "/suppressed_groups": suppressed,
        }
        for pointer, value in checked.items():
            if result.get(pointer[1:]) != value:
                raise ProtocolError(f"the release's {pointer[1:]} is not this node's")
        released = result.get("min_group_size")
        if not isinstance(released, int) or released < self._ctx.min_group_size:
            # The others' minimums are theirs to vouch for; never below this one.
            raise ProtocolError("the release's min_group_size is below this node's")
        return checked


# ------------------------------------------------------------ coordinator --
class StatsCoordinator(CoordinatorParty):
    """Relays, unmasks the two sealed sums, and brokers which cells pass; it
    learns every node's minimum group size, the survivors and which cells pass,
    never a count or a value."""

    def __init__(self, ctx: CoordinatorContext, layout: Layout) -> None:
        self._ctx = ctx
        self._layout = layout
        self._cells = len(C.cells(layout))
        self._policies: dict[str, int] = {}
        self._round = C.COUNTS
        self._server = SecAggServer(self._config(C.COUNTS, ctx.parties), self._keys())
        self._counts_survivors: tuple[str, ...] = ()
        self._dropped: set[str] = set()
        self._passing: dict[str, tuple[int, ...]] = {}
        self._agreed: tuple[int, ...] | None = None
        self._total: MaskVector | None = None
        self._summary: dict[str, Any] = {}

    def _keys(self) -> dict[str, Any]:
        return identity_keys({p: self._ctx.signing_keys[p] for p in self._ctx.parties})

    def _config(self, round_: str, parties: Sequence[str]) -> SecAggConfig:
        length = self._cells if round_ == C.COUNTS else self._layout.vector_length
        sealed = length + DEFAULT_CHECKS
        return secagg_config(self._ctx.job_id, round_, parties, sealed,
                             self._layout.params.threshold)  # fmt: skip

    def start(self) -> list[Outbound]:
        return _prefix(C.COUNTS, self._server.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        sender, stage = message.sender, message.stage
        if sender not in self._ctx.parties:
            raise ProtocolError(f"'{sender}' is not a party of this job")
        if stage == C.POLICY:
            self._on_policy(sender, message.payload)
            return []
        if stage == C.PASSING:
            return self._on_passing(sender, message.payload)
        inner = _strip(stage, self._round)
        if inner is None:
            if _strip(stage, C.COUNTS) is not None and self._round == C.VALUES:
                return []  # a late answer to the counts round changes nothing
            raise ProtocolError(f"unexpected stage '{stage}'")
        out = _prefix(self._round, self._server.receive(
            Inbound(sender, inner, message.payload)))  # fmt: skip
        return out + self._after_round()

    def _on_policy(self, sender: str, payload: bytes) -> None:
        if sender in self._policies:
            raise ProtocolError(f"{sender!r} already sent its minimum group size")
        if len(payload) > _MAX_POLICY_BYTES:
            raise ProtocolError(f"the policy message of {sender!r} is too large")
        value = C.load(payload, "policy").get("min_group_size")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProtocolError(f"{sender!r} sent an invalid minimum group size")
        self._policies[sender] = value

    def _after_round(self) -> list[Outbound]:
        if not self._server.finished:
            return []
        summary = self._server.result()
        self._dropped |= set(summary["dropped"])
        survivors = tuple(summary["survivors"])
        total = self._server.sum_vector()
        if self._round == C.COUNTS:
            left = sorted(set(survivors) & self._dropped)
            if left:
                raise ProtocolAbort(
                    f"{', '.join(left)} left after sending its counts; nothing is "
                    "released"
                )
            self._counts_survivors = survivors
            self._round = "passing"
            body = C.dump(
                {"survivors": list(survivors), "total": C.ring_to_text(total)}
            )
            return [Outbound(p, C.COUNTS_SUM, body) for p in survivors]
        self._total = total
        self._summary = {"survivors": list(survivors)}
        self._round = "done"
        return []

    def _on_passing(self, sender: str, payload: bytes) -> list[Outbound]:
        if self._round != "passing" or sender not in self._counts_survivors:
            raise ProtocolError(f"unexpected passing cells from {sender!r}")
        if sender in self._passing:
            raise ProtocolError(f"{sender!r} already sent its passing cells")
        body = C.load(payload, "passing")
        survivors = C.names(body.get("survivors"), self._ctx.parties, "survivor list")
        if survivors != tuple(sorted(self._counts_survivors)):
            raise ProtocolError(f"{sender!r} saw other survivors")
        self._passing[sender] = C.indices(body.get("passing"), self._cells)
        if set(self._passing) < set(self._counts_survivors):
            return []
        agreed = set.intersection(*(set(p) for p in self._passing.values()))
        self._agreed = tuple(sorted(agreed))
        self._round = C.VALUES
        self._server = SecAggServer(
            self._config(C.VALUES, self._counts_survivors),
            {p: self._keys()[p] for p in self._counts_survivors},
        )
        begin = C.dump({"passing": list(self._agreed)})
        out = [Outbound(p, C.VALUES_BEGIN, begin) for p in self._counts_survivors]
        return out + _prefix(C.VALUES, self._server.start())

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        self._dropped |= parties
        if self._round == "passing":
            lost = parties & set(self._counts_survivors)
            if lost:
                raise ProtocolAbort(
                    f"{', '.join(sorted(lost))} left between the rounds; nothing is "
                    "released"
                )
            return []
        if self._round not in (C.COUNTS, C.VALUES):
            return []
        mine = frozenset(p for p in parties if p in self._round_parties())
        if not mine:
            return []
        try:
            out = _prefix(self._round, self._server.dropped(mine))
        except ProtocolAbort as exc:
            raise ProtocolAbort(
                f"too few nodes remain to unmask the sum safely: {exc}"
            ) from None
        return out + self._after_round()

    def _round_parties(self) -> tuple[str, ...]:
        return self._counts_survivors if self._round == C.VALUES else self._ctx.parties

    def waiting_for(self) -> frozenset[str]:
        if self._round == "passing":
            return frozenset(self._counts_survivors) - set(self._passing)
        if self._round in (C.COUNTS, C.VALUES):
            return self._server.waiting_for()
        return frozenset()

    def progress(self) -> Progress:
        if self._round == "passing":
            return Progress(
                stage="cells passing",
                heard=len(self._passing),
                expected=len(self._counts_survivors),
            )
        if self._round in (C.COUNTS, C.VALUES):
            inner = self._server.progress()
            return Progress(
                stage=f"{self._round}/{inner.stage}",
                heard=inner.heard,
                expected=inner.expected,
            )
        return Progress(stage="sealed sum ready")

    @property
    def finished(self) -> bool:
        return self._total is not None

    def result(self) -> Mapping[str, Any]:
        if self._total is None or self._agreed is None:
            raise ProtocolError("the result is not available before the job finishes")
        missing = [p for p in self._summary["survivors"] if p not in self._policies]
        if missing:
            raise ProtocolError(f"no minimum group size from {missing}")
        return {
            **self._summary,
            # whose data is not in the result (a node lost after its masked
            # values is in the sum, and among the survivors)
            "dropped": sorted(set(self._ctx.parties) - set(self._summary["survivors"])),
            "passing": list(self._agreed),
            "suppressed_groups": C.suppressed_groups(self._layout, self._agreed),
            "min_group_size": max(self._policies.values()),
            "sealed": {"session": session(self._ctx.job_id, C.VALUES),
                       "attachment": SUM_ATTACHMENT},
        }  # fmt: skip

    def attachments(self) -> Mapping[str, bytes]:
        if self._total is None:
            return {}
        return {SUM_ATTACHMENT: np.ascontiguousarray(self._total, "<u8").tobytes()}


# ---------------------------------------------------------------- analyst --
class StatsAnalyst(AnalystParty):
    """Receives the values' seed from the leader node; opens and checks the
    released sealed sum, and derives the statistics."""

    def __init__(self, ctx: AnalystContext, layout: Layout) -> None:
        self._ctx = ctx
        self._layout = layout
        self._seed: bytes | None = None
        self._sum: bytes | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != C.ANALYST_SEED or message.sender != leader(
            self._ctx.parties
        ):
            raise ProtocolError(f"unexpected '{message.stage}' from {message.sender!r}")
        if self._seed is not None:
            raise ProtocolError("the seed arrived twice")
        try:
            seed = bytes.fromhex(C.load(message.payload, "seed")["values"])
        except (KeyError, ValueError, TypeError):
            raise ProtocolError("malformed seed") from None
        if len(seed) != 32:
            raise ProtocolError("malformed seed")
        self._seed = seed
        return []

    @property
    def finished(self) -> bool:
        return self._seed is not None

    def attach(self, attachments: Mapping[str, bytes]) -> None:
        self._sum = attachments.get(SUM_ATTACHMENT)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        layout, ctx = self._layout, self._ctx
        if self._seed is None or self._sum is None:
            raise ProtocolError("the sealed sum or its seed is missing")
        survivors = C.names(result.get("survivors"), ctx.parties, "survivor list")
        seal = sealer(self._seed, ctx.job_id, C.VALUES, layout.vector_length)
        total = C.ring_from_bytes(self._sum, seal.sealed_length)
        values = seal.open(total, survivors)  # refuses a sum that does not verify
        released = release(
            layout,
            values,
            survivors=survivors,
            dropped=list(result.get("dropped", [])),
            min_group_size=int(result["min_group_size"]),
        )
        if released["suppressed_groups"] != list(result.get("suppressed_groups", [])):
            raise ProtocolError("the released cells are not the ones the nodes passed")
        return {
            **released,
            "passing": list(result["passing"]),
            "sealed": dict(result["sealed"]),
            "values_seed": self._seed.hex(),
        }
