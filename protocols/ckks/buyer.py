"""The buyer's party: encrypts its own rows under its own key, decrypts the scores.

The buyer learns its scores (each with the owner's flooding noise, std p/8) and
the public configuration; the owner learns the row and feature counts and nothing
about the features (CKKS under a key only the buyer holds); the coordinator relays
ciphertexts and learns their sizes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.ckks.backend import BuyerKeys, CkksBackend
from protocols.ckks.config import InferenceConfig
from protocols.ckks.messages import (
    CONTEXT,
    FEATURES,
    SCORES,
    FeatureBatch,
    ScoreBlock,
    encode_context,
)
from protocols.ckks.tenseal_backend import TENSEAL
from protocols.models.reference import apply_link
from protocols.party import Inbound, Outbound, Party


class CkksBuyer(Party):
    """Scores ``rows`` (raw features, schema order) against the owner's model.

    The rows are standardised with the config's public schema and refused if any
    value is outside +-``input_bound`` (an overflow would decrypt to garbage). The
    party fails closed: after refusing one message it refuses everything after.
    """

    def __init__(
        self,
        name: str,
        config: InferenceConfig,
        rows: npt.ArrayLike,
        *,
        backend: CkksBackend = TENSEAL,
    ) -> None:
        if name != config.buyer:
            raise ConfigError(f"{name!r} is not the buyer of run {config.session_id}")
        x = config.schema.standardise(rows)
        if x.shape[0] != config.row_count:
            raise ConfigError(
                f"the config expects {config.row_count} rows, got {x.shape[0]}"
            )
        bad = ~np.isfinite(x) | (np.abs(x) > config.input_bound)
        if bad.any():
            row, column = (int(i[0]) for i in np.nonzero(bad))
            raise ConfigError(
                f"{int(bad.sum())} standardised values are not finite or exceed "
                f"+-{config.input_bound} (first: row {row}, feature "
                f"{config.schema.features[column]!r})"
            )
        self.name = name
        self._config = config
        self._backend = backend
        self._rows: npt.NDArray[np.float64] | None = np.asfortranarray(x)
        self._keys: BuyerKeys | None = None
        self._context_digest = b""
        self._raw = np.empty(config.row_count)
        self._next_block = 0
        self._expect: str | None = None
        self._refused: str | None = None
        self._rows_encrypted = 0

    @property
    def finished(self) -> bool:
        return self._next_block == self._config.blocks

    @property
    def rows_encrypted(self) -> int:
        """Rows whose features are encrypted and queued for the owner."""
        return self._rows_encrypted

    @property
    def rows_scored(self) -> int:
        """Rows whose scores are decrypted."""
        return min(self._next_block * self._config.params.slots, self._config.row_count)

    def start(self) -> list[Outbound]:
        """Make the keys; send the public context, then every block's ciphertexts."""
        if self._keys is not None or self._rows is None:
            raise ProtocolError(f"{self.name} has already started")
        config, rows = self._config, self._rows
        keys = self._keys = self._backend.generate(config.params)
        context = keys.public_context()
        self._context_digest = hashlib.sha256(context).digest()
        out = [self._send(CONTEXT, encode_context(context, config.digest))]
        slots = config.params.slots
        for block in range(config.blocks):
            span = slice(block * slots, block * slots + config.block_rows(block))
            cts = tuple(
                keys.encrypt(rows[span, j]) for j in range(config.feature_count)
            )
            batch = FeatureBatch(self._context_digest, block, cts)
            out.append(self._send(FEATURES, batch.encode(config.digest)))
            self._rows_encrypted += config.block_rows(block)
        self._rows = None  # the plaintext is not needed again
        self._expect = SCORES
        return out

    def receive(self, message: Inbound) -> list[Outbound]:
        """Decrypt one block of scores (blocks arrive in order)."""
        if self._refused is not None:
            raise ProtocolAbort(f"{self.name} already refused: {self._refused}")
        try:
            self._on_scores(message)
        except ProtocolError as exc:
            self._refused = str(exc)
            self._expect = None
            raise
        return []

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._config.owner in parties and not self.finished:
            self._expect = None
            raise ProtocolAbort("the model owner went away")
        return []

    @property
    def raw_scores(self) -> npt.NDArray[np.float64]:
        """The decrypted outputs before the link (logits for a logistic model)."""
        if not self.finished:
            raise ProtocolError(f"{self.name} has not received every score yet")
        return self._raw.copy()

    @property
    def scores(self) -> npt.NDArray[np.float64]:
        """The scores: the link applied by the buyer, after decryption."""
        return apply_link(self._config.link, self.raw_scores)

    def _on_scores(self, message: Inbound) -> None:
        config = self._config
        if message.sender != config.owner:
            raise ProtocolError(
                f"{self.name} only accepts messages from {config.owner}"
            )
        if self._expect is None or self._keys is None:
            raise ProtocolError(f"{self.name} is not waiting for scores")
        if message.stage != self._expect:
            raise ProtocolError(
                f"{self.name} expected {self._expect}, got {message.stage}"
            )
        cap = self._backend.max_ciphertext_bytes(
            config.params, config.params.output_limbs
        )
        scores = ScoreBlock.decode(message.payload, config.digest, ciphertext_cap=cap)
        if scores.context_digest != self._context_digest:
            raise ProtocolError("the scores were computed under another context")
        if scores.block != self._next_block:
            raise ProtocolError(
                f"expected scores of block {self._next_block}, got {scores.block}"
            )
        count = config.block_rows(scores.block)
        values = self._keys.decrypt(scores.ciphertext, count)
        start = scores.block * config.params.slots
        self._raw[start : start + count] = values
        self._next_block += 1
        if self.finished:
            self._expect = None

    def _send(self, stage: str, payload: bytes) -> Outbound:
        return Outbound(self._config.owner, stage, payload)
