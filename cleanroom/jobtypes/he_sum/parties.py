"""The ``he_sum`` parties: the analyst's key, the nodes' encrypted cells, the
coordinator's product of ciphertexts, the analyst's decryption and checks.

    analyst -> nodes, coordinator   he_sum/key    {statement, signature}: the
                                                  public key, signed for this job
    node -> coordinator             he_sum/cipher the packed, encrypted vector
    node -> analyst (sealed)        he_sum/tag    signed {tag, digest, key}
    coordinator releases            {key, inputs: {node: digest}}, attachment
                                    ``aggregate``: the product, re-randomised
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import pandas as pd

from cleanroom.errors import (
    InvalidSignature,
    PolicyRefusal,
    ProtocolAbort,
    ProtocolError,
)
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.he_sum.params import TAG_BITS, HeSumParams
from cleanroom.keys import canonical_json, sign_statement, verify_statement
from protocols.paillier import (
    EncryptedVector,
    Encryptor,
    KeyPair,
    PublicKey,
    decrypt_vector,
    generate_keypair,
    public_key_from_bytes,
    public_key_to_bytes,
    shared_pool,
    sum_vectors,
    vector_from_bytes,
)
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

KEY: Final = "he_sum/key"
CIPHER: Final = "he_sum/cipher"
TAG: Final = "he_sum/tag"
AGGREGATE: Final = "aggregate"
_MAX_STATEMENT_BYTES: Final = 64 * 1024


def vector_context(job_id: str, spec_hash: str) -> bytes:
    """What every vector of one job is bound to besides the key."""
    return f"cleanroom/he_sum/v1\x00{job_id}\x00{spec_hash}".encode()


def _signed(payload: bytes, what: str) -> tuple[dict[str, Any], str]:
    if len(payload) > _MAX_STATEMENT_BYTES:
        raise ProtocolError(f"the {what} is too large")
    try:
        body = json.loads(payload)
        statement, signature = body["statement"], body["signature"]
    except (ValueError, KeyError, TypeError):
        raise ProtocolError(f"malformed {what}") from None
    if not isinstance(statement, dict) or not isinstance(signature, str):
        raise ProtocolError(f"malformed {what}")
    return statement, signature


def _sealed(key: Any, statement: Mapping[str, Any]) -> bytes:
    return canonical_json(
        {"statement": dict(statement), "signature": sign_statement(key, statement)}
    )


def read_key(
    payload: bytes,
    *,
    job_id: str,
    spec_hash: str,
    analyst_key: bytes,
    params: HeSumParams,
) -> PublicKey:
    """The analyst's public key, checked: signed by the analyst's own key for this
    job and spec, of the declared size, a valid modulus and base."""
    statement, signature = _signed(payload, "public key message")
    try:
        verify_statement(analyst_key, statement, signature)
    except InvalidSignature:
        raise ProtocolError("the public key is not signed by the analyst") from None
    if statement.get("job_id") != job_id or statement.get("spec_hash") != spec_hash:
        raise ProtocolError("the public key was sent for another job")
    try:
        raw = bytes.fromhex(str(statement.get("public_key", "")))
    except ValueError:
        raise ProtocolError("the public key is not hex") from None
    key = public_key_from_bytes(raw, allow_legacy_2048=params.allow_legacy_2048)
    if key.bits != params.key_bits:
        raise ProtocolError(
            f"the public key has {key.bits} bits; the spec says {params.key_bits}"
        )
    return key


class HeSumNode(NodeParty):
    """Sums its columns per cell, applies its minimum group size, encrypts under
    the analyst's key and sends the vector to the coordinator."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._params: HeSumParams = ctx.params
        self._digest: str | None = None
        self._rows = 0

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx, params = self._ctx, self._params
        if message.sender != ANALYST or message.stage != KEY:
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        if self._digest is not None:
            raise ProtocolError("the public key was already received")
        key = read_key(
            message.payload,
            job_id=ctx.job_id,
            spec_hash=ctx.spec.spec_hash,
            analyst_key=ctx.peer_signing_keys[ANALYST],
            params=params,
        )
        values = self.values()
        layout = params.layout()
        encryptor = Encryptor(key, random=ctx.random, pool=shared_pool())
        vector = encryptor.encrypt_integers(values, layout, path="params.columns")
        context = vector_context(ctx.job_id, ctx.spec.spec_hash)
        data = encryptor.to_bytes(vector, context=context)
        self._digest = hashlib.sha256(data).hexdigest()
        statement = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "key": key.fingerprint.hex(),
            "digest": self._digest,
            "tag": values[0],
        }
        # The tag first: the analyst holds it before the release can exist.
        return [
            Outbound(ANALYST, TAG, _sealed(ctx.signing_key, statement)),
            Outbound(COORDINATOR, CIPHER, data),
        ]

    def values(self) -> list[int]:
        """The plaintext vector: checked against the packing headroom per column
        (SpecError naming the column, before anything is encrypted)."""
        ctx, params = self._ctx, self._params
        frame = ctx.data
        used = list(params.columns) + ([params.group_by] if params.group_by else [])
        complete = frame[used].notna().all(axis=1)
        rows = frame[complete]
        self._rows = len(frame)
        if params.group_by is None:
            masks = [np.ones(len(rows), dtype=bool)]
        else:
            keys = rows[params.group_by].astype(str).to_numpy()
            masks = [keys == str(g) for g in params.groups]
        reals = params.layout(scaled=True)
        tag = _tag(ctx.random)
        values = [tag, 1]
        sensitivities = params.sensitivities() if params.privacy else []
        for mask in masks:
            count = int(mask.sum())
            if count < ctx.min_group_size:
                cell = [0] * (1 + len(params.columns))
                suppressed = 1
            else:
                sums = [self._column(rows.loc[mask, c], c) for c in params.columns]
                scaled = reals.reals(sums, path="params.columns", names=params.columns)
                cell, suppressed = [count, *scaled], 0
            if params.privacy is not None:
                # Every cell carries this node's share, suppressed or not, so the
                # noise in each released cell is the sum of every contributor's.
                noise = params.privacy.sample(sensitivities, ctx.random)
                cell = [v + e for v, e in zip(cell, noise, strict=True)]
            values += [suppressed, *cell]
        return values

    def _column(self, values: pd.Series[Any], column: str) -> float:
        numbers = pd.to_numeric(values).astype(float)
        bounds = self._params.clip.get(column)
        if bounds is not None:
            numbers = numbers.clip(*bounds)
        return float(numbers.sum())

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=self._rows)

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        inputs = result.get("inputs")
        if not isinstance(inputs, dict) or inputs.get(self._ctx.node) != self._digest:
            raise ProtocolError("the release does not hold this node's ciphertext")
        try:
            self._ctx.inputs_guard(frozenset(inputs))
        except PolicyRefusal as refusal:
            raise ProtocolError("; ".join(refusal.reasons)) from None
        return {f"/inputs/{self._ctx.node}": self._digest}


def _tag(random: Any) -> int:
    return int.from_bytes(random(8), "big") >> (64 - TAG_BITS)


class HeSumCoordinator(CoordinatorParty):
    """Multiplies the nodes' ciphertexts; it holds no key that decrypts them."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._params: HeSumParams = ctx.params
        self._key: PublicKey | None = None
        self._pending: dict[str, bytes] = {}
        self._vectors: dict[str, tuple[EncryptedVector, str]] = {}
        self._gone: set[str] = set()
        self._aggregate: bytes | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx = self._ctx
        if message.stage == KEY and message.sender == ANALYST:
            if self._key is not None:
                raise ProtocolError("the public key was already received")
            self._key = read_key(
                message.payload,
                job_id=ctx.job_id,
                spec_hash=ctx.spec.spec_hash,
                analyst_key=ctx.signing_keys[ANALYST],
                params=self._params,
            )
            for node, data in sorted(self._pending.items()):
                self._add(node, data)
            self._pending.clear()
            return []
        if message.stage != CIPHER or message.sender not in ctx.parties:
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        node = message.sender
        if node in self._vectors or node in self._pending:
            raise ProtocolError(f"'{node}' already sent its ciphertext")
        if self._key is None:
            if len(message.payload) > 1 << 24:
                raise ProtocolError(f"the ciphertext from '{node}' is too large")
            self._pending[node] = message.payload
        else:
            self._add(node, message.payload)
        return []

    def _add(self, node: str, data: bytes) -> None:
        assert self._key is not None
        params = self._params
        vector = vector_from_bytes(
            data,
            self._key,
            params.layout(),
            context=vector_context(self._ctx.job_id, self._ctx.spec.spec_hash),
            max_length=params.length,
        )
        if vector.length != params.length or not vector.packed:
            raise ProtocolError(f"the ciphertext from '{node}' has the wrong shape")
        self._vectors[node] = (vector, hashlib.sha256(data).hexdigest())

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if ANALYST in parties and self._key is None:
            raise ProtocolAbort("the analyst went away before sending its key")
        parties = parties - {ANALYST}  # once keyed, the release can wait for it
        self._gone |= parties
        for node in parties:
            self._vectors.pop(node, None)
            self._pending.pop(node, None)
        remaining = len(self._ctx.parties) - len(self._gone)
        if remaining < self._params.min_inputs:
            raise ProtocolAbort(
                f"parties dropped out: {', '.join(sorted(self._gone))} "
                f"({remaining} of {len(self._ctx.parties)} inputs remain; the spec "
                f"needs {self._params.min_inputs})"
            )
        return []

    def waiting_for(self) -> frozenset[str]:
        if self._key is None:
            return frozenset({ANALYST})
        return frozenset(self._ctx.parties) - set(self._vectors) - self._gone

    def progress(self) -> Progress:
        return Progress(
            stage=CIPHER if self._key else KEY,
            heard=len(self._vectors),
            expected=len(self._ctx.parties) - len(self._gone),
        )

    @property
    def finished(self) -> bool:
        return self._key is not None and not self.waiting_for()

    def _product(self) -> bytes:
        if self._aggregate is None:
            assert self._key is not None
            total = sum_vectors([v for _, (v, _) in sorted(self._vectors.items())])
            encryptor = Encryptor(
                self._key, random=self._ctx.random, pool=shared_pool()
            )
            self._aggregate = encryptor.to_bytes(
                total,
                context=vector_context(self._ctx.job_id, self._ctx.spec.spec_hash),
            )
        return self._aggregate

    def result(self) -> Mapping[str, Any]:
        assert self._key is not None
        return {
            "key": self._key.fingerprint.hex(),
            "key_bits": self._key.bits,
            "legacy_key": self._key.legacy,
            "inputs": {n: d for n, (_, d) in sorted(self._vectors.items())},
            "dropped": sorted(self._gone),
            "aggregate": hashlib.sha256(self._product()).hexdigest(),
        }

    def attachments(self) -> Mapping[str, bytes]:
        return {AGGREGATE: self._product()}


class HeSumAnalyst(AnalystParty):
    """Makes the key pair, collects the nodes' sealed tags, decrypts the total."""

    def __init__(self, ctx: AnalystContext) -> None:
        self._ctx = ctx
        self._params: HeSumParams = ctx.params
        self._keys: KeyPair | None = None
        self._tags: dict[str, dict[str, Any]] = {}
        self._aggregate: bytes | None = None

    def start(self) -> list[Outbound]:
        ctx, params = self._ctx, self._params
        self._keys = generate_keypair(
            params.key_bits,
            allow_legacy_2048=params.allow_legacy_2048,
            random=ctx.random,
        )
        statement = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "public_key": public_key_to_bytes(self._keys.public).hex(),
        }
        body = _sealed(ctx.signing_key, statement)
        return [Outbound(p, KEY, body) for p in (*ctx.parties, COORDINATOR)]

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx, node = self._ctx, message.sender
        if message.stage != TAG or node not in ctx.parties or node in self._tags:
            raise ProtocolError(f"unexpected {message.stage} from '{node}'")
        assert self._keys is not None
        statement, signature = _signed(message.payload, "tag")
        try:
            verify_statement(ctx.peer_signing_keys[node], statement, signature)
        except InvalidSignature:
            raise ProtocolError(f"the tag from '{node}' is not signed by it") from None
        expected = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": node,
            "dataset": ctx.spec.input_for(node).dataset,
            "key": self._keys.public.fingerprint.hex(),
        }
        if any(statement.get(k) != v for k, v in expected.items()):
            raise ProtocolError(f"the tag from '{node}' is for another job or key")
        tag = statement.get("tag")
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < 2**62:
            raise ProtocolError(f"the tag from '{node}' is malformed")
        self._tags[node] = statement
        return []

    @property
    def finished(self) -> bool:
        return set(self._tags) == set(self._ctx.parties)

    def progress(self) -> Progress:
        return Progress(
            stage=TAG, heard=len(self._tags), expected=len(self._ctx.parties)
        )

    def attach(self, attachments: Mapping[str, bytes]) -> None:
        self._aggregate = attachments.get(AGGREGATE)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        from cleanroom.jobtypes.he_sum.release import read_totals

        if self._keys is None or self._aggregate is None:
            raise ProtocolError("the release has no aggregate to decrypt")
        ctx, params, keys = self._ctx, self._params, self._keys
        if result.get("key") != keys.public.fingerprint.hex():
            raise ProtocolError("the release is under another public key")
        inputs = result.get("inputs")
        if not isinstance(inputs, dict) or len(inputs) < params.min_inputs:
            raise ProtocolError("the release covers too few inputs")
        for node, digest in inputs.items():
            tag = self._tags.get(node)
            if tag is None or tag["digest"] != digest:
                raise ProtocolError(f"the release's input of '{node}' is not its own")
        if hashlib.sha256(self._aggregate).hexdigest() != result.get("aggregate"):
            raise ProtocolError("the aggregate does not match the release")
        vector = vector_from_bytes(
            self._aggregate,
            keys.public,
            params.layout(),
            context=vector_context(ctx.job_id, ctx.spec.spec_hash),
            max_length=params.length,
        )
        # The bound of a sum of one vector per input, whatever the header says.
        bound = params.layout().max_value * len(inputs)
        vector = vector.derived(vector.ciphertexts, bound)
        values = decrypt_vector(keys.private, vector, pool=shared_pool())
        if values[0] != sum(self._tags[n]["tag"] for n in inputs):
            raise ProtocolError("the aggregate holds other inputs than released")
        if values[1] != len(inputs):
            raise ProtocolError("the aggregate counts another number of inputs")
        return {**result, **read_totals(params, values, sorted(inputs))}
