"""The model owner's party: scores encrypted rows; the model never leaves the node.

Every inbound message is checked (sender, stage order, header and configuration
digest, sizes, the context it was made under, the block index, the ciphertext
count, each ciphertext's level and scale) before any ciphertext is evaluated. The
owner learns the row and feature counts, never a feature; see
:mod:`protocols.ckks.flooding` for what the returned scores reveal of the model.
"""

from __future__ import annotations

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.ckks.backend import CkksBackend, OwnerContext
from protocols.ckks.config import InferenceConfig
from protocols.ckks.evaluate import evaluate_block
from protocols.ckks.messages import (
    CONTEXT,
    FEATURES,
    SCORES,
    FeatureBatch,
    ScoreBlock,
    decode_context,
)
from protocols.ckks.tenseal_backend import TENSEAL
from protocols.models.asset import ModelAsset
from protocols.party import (
    SYSTEM_RANDOM,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    RandomSource,
)


class CkksOwner(NodeParty):
    """Serves ``model`` to the config's buyer; ``random`` draws the flooding noise.

    The owner fails closed: after refusing one message it refuses everything after.
    """

    def __init__(
        self,
        name: str,
        config: InferenceConfig,
        model: ModelAsset,
        *,
        backend: CkksBackend = TENSEAL,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        if name != config.owner:
            raise ConfigError(f"{name!r} is not the owner of run {config.session_id}")
        config.matches(model)
        self.name = name
        self._config = config
        self._model = model
        self._backend = backend
        self._random = random
        self._context: OwnerContext | None = None
        self._started = False
        self._expect: str | None = None
        self._next_block = 0
        self._refused: str | None = None

    @property
    def finished(self) -> bool:
        return self._next_block == self._config.blocks

    @property
    def rows_evaluated(self) -> int:
        """Rows whose encrypted scores have been sent back."""
        return min(self._next_block * self._config.params.slots, self._config.row_count)

    def usage(self) -> NodeUsage:
        """No dataset row is touched. ``scored_rows`` is what an honest buyer got;
        ``evaluations_exposed`` what a dishonest one could get (quotas count it)."""
        blocks = self._next_block
        exposed = blocks * self._config.params.poly_modulus_degree
        return NodeUsage(
            units={"scored_rows": self.rows_evaluated, "evaluations_exposed": exposed}
        )

    def start(self) -> list[Outbound]:
        """The owner waits for the buyer's context."""
        if self._started:
            raise ProtocolError(f"{self.name} has already started")
        self._started = True
        self._expect = CONTEXT
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        """Load the context, or score one block of features."""
        if self._refused is not None:
            raise ProtocolAbort(f"{self.name} already refused: {self._refused}")
        try:
            return self._dispatch(message)
        except ProtocolError as exc:
            self._refused = str(exc)
            self._expect = None
            raise

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._config.buyer in parties and not self.finished:
            self._expect = None
            raise ProtocolAbort("the buyer went away")
        return []

    def _dispatch(self, message: Inbound) -> list[Outbound]:
        config = self._config
        if message.sender != config.buyer:
            raise ProtocolError(
                f"{self.name} only accepts messages from {config.buyer}"
            )
        if self._expect is None:
            state = "finished" if self.finished else "not started"
            raise ProtocolError(f"{self.name} is {state}; refusing {message.stage}")
        if message.stage != self._expect:
            raise ProtocolError(
                f"{self.name} expected {self._expect}, got {message.stage}"
            )
        if message.stage == CONTEXT:
            cap = self._backend.max_context_bytes(config.params)
            data = decode_context(message.payload, config.digest, cap)
            self._context = self._backend.open(config.params, data)
            self._expect = FEATURES
            return []
        return self._score(message.payload)

    def _score(self, payload: bytes) -> list[Outbound]:
        config, context = self._config, self._context
        assert context is not None
        params = config.params
        cap = self._backend.max_ciphertext_bytes(params, len(params.data_primes))
        batch = FeatureBatch.decode(
            payload, config.digest, features=config.feature_count, ciphertext_cap=cap
        )
        if batch.context_digest != context.digest:
            raise ProtocolError("the features were encrypted under another context")
        if batch.block != self._next_block:
            raise ProtocolError(f"expected block {self._next_block}, got {batch.block}")
        count = config.block_rows(batch.block)
        handles = [context.load(ct, count) for ct in batch.ciphertexts]
        scores = evaluate_block(
            context, self._model, params, config.flood, handles, count, self._random
        )
        self._next_block += 1
        if self.finished:
            self._expect = None
        block = ScoreBlock(context.digest, batch.block, scores)
        return [Outbound(config.buyer, SCORES, block.encode(config.digest))]
