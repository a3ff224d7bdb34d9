"""Verification and PIR parties: the holder evaluates one blinded batch, the buyer
looks the results up in its cached table.

Stages: QUERY (buyer -> holder: the job's declared number of blinded elements)
then EVALUATE (holder -> buyer). The holder meters exactly one unit per
evaluation, known before any work, and does the same work for present and
absent keys: it never sees which keys, results or tags the buyer looks at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final, Literal

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError, QuotaExceeded
from protocols.oprf import core, messages
from protocols.oprf.messages import EVALUATE, QUERY
from protocols.oprf.table import (
    OprfTable,
    TableHeader,
    all_fields_input,
    derive_tag,
    field_input,
    pir_input,
)
from protocols.party import (
    SYSTEM_RANDOM,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Party,
    RandomSource,
)
from protocols.psi.group import SERIAL, BatchRunner
from protocols.psi.normalize import encode_field

Product = Literal["verify", "pir"]
MAX_BATCH: Final = 2**16
UNIT: Final = "oprf_evaluations"
_DIGEST_DOMAIN: Final = b"cleanroom/oprf/v1/lookup\x00"
_FILLER: Final = b"filler\x00"
"""Prefix of the buyer's padding inputs: no table input starts with it."""


@dataclass(frozen=True)
class LookupConfig:
    """One verify or PIR job: who, which table version, how many evaluations."""

    session_id: str
    holder: str
    buyer: str
    product: Product
    table: TableHeader
    evaluations: int
    all_fields: bool = False

    def __post_init__(self) -> None:
        if not self.session_id or self.holder == self.buyer:
            raise ConfigError("a lookup needs a session id and two distinct parties")
        if self.product not in ("verify", "pir"):
            raise ConfigError(f"unknown lookup product {self.product!r}")
        if isinstance(self.evaluations, bool) or not 1 <= self.evaluations <= MAX_BATCH:
            raise ConfigError(f"evaluations must be 1..{MAX_BATCH}")
        if self.product == "pir" and not self.table.pir_fields:
            raise ConfigError("this table has no PIR records")
        if self.product == "verify":
            wanted = self.table.all_fields if self.all_fields else self.table.per_field
            if not wanted:
                mode = "all-fields" if self.all_fields else "per-field"
                raise ConfigError(f"this table's policy allows no {mode} checks")

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 over every parameter, the table header's digest included."""
        h = hashlib.sha256(_DIGEST_DOMAIN)
        for text in (self.session_id, self.holder, self.buyer, self.product):
            h.update(encode_field(text))
        h.update(self.table.digest + self.evaluations.to_bytes(4, "big"))
        h.update(bytes([int(self.all_fields)]))
        return h.digest()


class LookupHolder(NodeParty):
    """The data holder: evaluates exactly ``config.evaluations`` blinded elements."""

    def __init__(
        self,
        config: LookupConfig,
        name: str,
        key: core.OprfKey,
        current: TableHeader,
        *,
        quota: int | None = None,
        runner: BatchRunner = SERIAL,
    ) -> None:
        if name != config.holder:
            raise ConfigError(f"{name!r} is not this lookup's holder")
        if key.key_id != current.key_id:
            raise ConfigError("the key does not belong to the current table")
        if config.table.digest != current.digest:
            raise ProtocolError("the buyer's table is not the current version")
        if quota is not None and config.evaluations > quota:
            raise QuotaExceeded(
                [f"{config.evaluations} evaluations exceed the {quota} left"]
            )
        self._config, self._key, self._runner = config, key, runner
        self._evaluated = 0
        self._done = False

    @property
    def finished(self) -> bool:
        """True once the batch is answered."""
        return self._done

    def start(self) -> list[Outbound]:
        """The buyer speaks first."""
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        """Evaluate the buyer's batch (refused whole if any element is invalid)."""
        config = self._config
        if self._done:
            raise ProtocolError(f"the holder has answered; refusing {message.stage}")
        if message.sender != config.buyer or message.stage != QUERY:
            raise ProtocolError(f"the holder expects {QUERY} from {config.buyer}")
        table = config.table
        elements = messages.decode(
            message.payload,
            QUERY,
            config.digest,
            table.content_hash,
            table.key_id,
            config.evaluations,
        )
        evaluated = core.evaluate(self._key, elements, self._runner)
        self._evaluated = config.evaluations
        self._done = True
        reply = messages.encode(
            EVALUATE, config.digest, table.content_hash, table.key_id, evaluated
        )
        return [Outbound(config.buyer, EVALUATE, reply)]

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """Nothing to recover: abort unless the answer went out already."""
        if self._done or self._config.buyer not in parties:
            return []
        raise ProtocolAbort(f"lookup: {self._config.buyer} dropped before {QUERY}")

    def usage(self) -> NodeUsage:
        """One unit per evaluation done."""
        return NodeUsage(units={UNIT: self._evaluated})


class _LookupBuyer(Party):
    """Blinds the job's inputs, then finalises the holder's reply."""

    def __init__(
        self,
        config: LookupConfig,
        name: str,
        table: OprfTable,
        inputs: Sequence[bytes],
        random: RandomSource,
        runner: BatchRunner,
    ) -> None:
        if name != config.buyer:
            raise ConfigError(f"{name!r} is not this lookup's buyer")
        if table.header.digest != config.table.digest:
            raise ProtocolError("the cached table is not the version this job uses")
        if len(inputs) > config.evaluations:
            raise ConfigError(
                f"{len(inputs)} distinct checks, the job declares {config.evaluations}"
            )
        # Repeated claims or keys cost one evaluation; random fillers keep the
        # batch at the declared size, so the holder cannot count repeats.
        padding = [
            _FILLER + random(32) for _ in range(config.evaluations - len(inputs))
        ]
        self._config, self._table = config, table
        self._inputs = [*inputs, *padding]
        self._runner = runner
        self._blinded = core.blind(self._inputs, random, runner)
        self._outputs: list[bytes] | None = None
        self._by_input: dict[bytes, bytes] = {}
        self._started = False

    @property
    def finished(self) -> bool:
        """True once the reply is finalised."""
        return self._outputs is not None

    def start(self) -> list[Outbound]:
        """Send the blinded batch."""
        if self._started:
            raise ProtocolError("the buyer has already started")
        self._started = True
        header = self._config.table
        payload = messages.encode(
            QUERY,
            self._config.digest,
            header.content_hash,
            header.key_id,
            self._blinded.elements,
        )
        return [Outbound(self._config.holder, QUERY, payload)]

    def receive(self, message: Inbound) -> list[Outbound]:
        """Check and finalise the evaluation (bound to the cached table's version)."""
        config = self._config
        if not self._started or self.finished:
            raise ProtocolError(f"the buyer does not expect {message.stage} now")
        if message.sender != config.holder or message.stage != EVALUATE:
            raise ProtocolError(f"the buyer expects {EVALUATE} from {config.holder}")
        header = self._table.header
        evaluated = messages.decode(
            message.payload,
            EVALUATE,
            config.digest,
            header.content_hash,
            header.key_id,
            config.evaluations,
        )
        self._outputs = core.finalize(
            self._inputs, self._blinded, evaluated, self._runner
        )
        self._by_input = dict(zip(self._inputs, self._outputs, strict=True))
        return []

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """The holder went away before answering: abort."""
        if self.finished or self._config.holder not in parties:
            return []
        raise ProtocolAbort(f"lookup: {self._config.holder} dropped during {EVALUATE}")

    def _answers(self) -> dict[bytes, bytes]:
        """OPRF output per input; ProtocolError before the holder's evaluation."""
        if self._outputs is None:
            raise ProtocolError("no answer before the holder's evaluation")
        return self._by_input


def _distinct(items: Sequence[bytes]) -> list[bytes]:
    return list(dict.fromkeys(items))


class VerifyBuyer(_LookupBuyer):
    """Checks claimed records: per record, match/no-match per field or one bit."""

    def __init__(
        self,
        config: LookupConfig,
        name: str,
        table: OprfTable,
        claims: Sequence[Mapping[str, str]],
        *,
        random: RandomSource = SYSTEM_RANDOM,
        runner: BatchRunner = SERIAL,
    ) -> None:
        header = table.header
        self._claims = [
            self._claim_inputs(header, c, config.all_fields) for c in claims
        ]
        flat = _distinct([x for per in self._claims for x in per.values()])
        super().__init__(config, name, table, flat, random, runner)

    def _claim_inputs(
        self, header: TableHeader, claim: Mapping[str, str], all_fields: bool
    ) -> dict[str, bytes]:
        norm = header.normalise
        rid = norm(header.id_column, claim[header.id_column])
        c = header.content_hash
        if all_fields:
            missing = [f for f in header.verify_fields if f not in claim]
            if missing:
                raise ConfigError(f"an all-fields claim lacks {missing}")
            values = [(f, norm(f, claim[f])) for f in header.verify_fields]
            return {"*": all_fields_input(c, rid, values)}
        return {
            f: field_input(c, rid, f, norm(f, claim[f]))
            for f in header.verify_fields
            if f in claim
        }

    def results(self) -> list[dict[str, bool]] | list[bool]:
        """Per claim: {field: matches} (per-field mode) or one bool (all-fields)."""
        tags = {x: derive_tag(y) for x, y in self._answers().items()}
        table = self._table
        if self._config.all_fields:
            column = table.all_tags
            assert column is not None
            return table.has_tags(column, [tags[per["*"]] for per in self._claims])
        found: dict[str, Iterator[bool]] = {}
        for name, column in table.field_tags.items():
            probes = [tags[per[name]] for per in self._claims if name in per]
            found[name] = iter(table.has_tags(column, probes))
        return [{f: next(found[f]) for f in per} for per in self._claims]


class PirBuyer(_LookupBuyer):
    """Retrieves the permitted fields of records by key; None where there is none."""

    def __init__(
        self,
        config: LookupConfig,
        name: str,
        table: OprfTable,
        keys: Sequence[str],
        *,
        random: RandomSource = SYSTEM_RANDOM,
        runner: BatchRunner = SERIAL,
    ) -> None:
        header = table.header
        self._keys = list(keys)
        self._key_inputs = [
            pir_input(header.content_hash, header.normalise(header.id_column, k))
            for k in self._keys
        ]
        inputs = _distinct(self._key_inputs)
        super().__init__(config, name, table, inputs, random, runner)

    def results(self) -> dict[str, dict[str, str] | None]:
        """Each requested key -> its record's permitted fields, or None if absent."""
        answers = self._answers()
        return {
            key: self._table.record(answers[x])
            for key, x in zip(self._keys, self._key_inputs, strict=True)
        }
