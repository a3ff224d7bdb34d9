"""The coordinator of a series round (``series``): relays the bundles, then
recombines the shares that remove the survivors' masks."""

from __future__ import annotations

import numpy as np

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.party import Outbound
from protocols.prg import add_masks
from protocols.secagg import keys
from protocols.secagg.config import SecAggConfig
from protocols.secagg.series import check_series_config
from protocols.secagg.series_wire import (
    SERIES_INPUT,
    SERIES_UNMASK,
    SeriesInput,
    SeriesRequest,
    SeriesResponse,
    bundle_bytes,
    series_digest,
)
from protocols.secagg.staged import StagedServer
from protocols.shamir import combine_values


class SeriesServer(StagedServer):
    """Sums the masked inputs and releases the survivors' sum; it reconstructs a
    survivor's self-mask seed and the seeds of pairs with a dropped party only,
    never the seed of a pair of survivors. ``dropped`` may be called at any time
    and aborts once fewer than the threshold can still answer."""

    def __init__(self, config: SecAggConfig) -> None:
        check_series_config(config)
        super().__init__(config, SERIES_INPUT)
        self._digest = series_digest(config)
        self._bundle_size = bundle_bytes(config.n)
        self._index = {p: i for i, p in enumerate(config.parties, start=1)}
        self._bundles: dict[str, dict[str, bytes]] = {}
        self._dropped: frozenset[str] = frozenset()
        self._wanted: set[tuple[str, str]] = set()  # the pairs every holder answers
        # The answering holders' share points, and every secret's values at them.
        self._points: list[int] = []
        self._self_mask: dict[str, list[int]] = {}
        self._pair: dict[tuple[str, str], list[int]] = {}

    def _handle(self, stage: str, sender: str, payload: bytes) -> None:
        if stage == SERIES_INPUT:
            self._on_input(sender, payload)
        else:
            self._on_response(sender, payload)

    @property
    def survivors(self) -> frozenset[str]:
        """The parties whose inputs are in the sum (empty before unmasking)."""
        return self._survivors if self._result is not None else frozenset()

    def _on_input(self, sender: str, payload: bytes) -> None:
        config = self._config
        message = SeriesInput.decode(
            payload, self._digest, length=config.vector_length, dtype=config.dtype,
            bundle_size=self._bundle_size,
        )  # fmt: skip
        others = set(config.parties) - {sender}
        if set(message.bundles) != others:
            raise ProtocolError(f"{sender!r} must send a bundle to every other party")
        np.add(self._sum, message.vector, out=self._sum)
        self._bundles[sender] = message.bundles

    def _on_response(self, sender: str, payload: bytes) -> None:
        response = SeriesResponse.decode(payload, self._digest)
        if (
            set(response.self_mask) != self._survivors
            or set(response.pair) != self._wanted
        ):
            raise ProtocolError(f"{sender!r} did not answer the unmask request it got")
        # Every holder answers for the same secrets, so each secret's values line
        # up with the holders' points.
        self._points.append(self._index[sender])
        for owner, value in response.self_mask.items():
            self._self_mask.setdefault(owner, []).append(value)
        for pair, value in response.pair.items():
            self._pair.setdefault(pair, []).append(value)

    def _advance_if_complete(self) -> list[Outbound]:
        if self._expected - self._gone - self._received:
            return []
        self._check_threshold()
        if self._stage == SERIES_INPUT:
            return self._send_requests()
        self._unmask()
        return []

    def _send_requests(self) -> list[Outbound]:
        # A party that sent its input and then vanished still survives: its vector
        # is in the sum, so its self-mask must be removed.
        self._survivors = frozenset(self._received)
        self._dropped = frozenset(self._config.parties) - self._survivors
        self._wanted = {(o, p) for o in self._survivors for p in self._dropped}
        live = self._survivors - self._gone
        survivors, dropped = (
            tuple(sorted(self._survivors)),
            tuple(sorted(self._dropped)),
        )
        out = []
        for party in sorted(live):
            bundles = {s: self._bundles[s][party] for s in survivors if s != party}
            request = SeriesRequest(survivors, dropped, bundles)
            out.append(Outbound(party, SERIES_UNMASK, request.encode(self._digest)))
        self._bundles.clear()
        self._begin(SERIES_UNMASK, live)
        return out

    def _unmask(self) -> None:
        owners = sorted(self._survivors)
        pairs = sorted(self._pair)
        values = [self._self_mask[o] for o in owners] + [self._pair[p] for p in pairs]
        try:
            seeds = combine_values(self._points, self._config.threshold, values)
        except ProtocolAbort as exc:
            raise ProtocolAbort(f"cannot recover the round's seeds: {exc}") from None
        except ProtocolError as exc:
            raise ProtocolError(f"the seed shares are corrupt: {exc}") from None
        if any(len(seed) != keys.KEY_BYTES for seed in seeds):
            raise ProtocolError("a recovered seed has the wrong size")
        subtract = seeds[: len(owners)]
        add: list[bytes] = []
        for (owner, peer), seed in zip(pairs, seeds[len(owners) :], strict=True):
            # Undo what the surviving owner applied for this pair.
            (subtract if keys.adds_pair_mask(owner, peer) else add).append(seed)
        add_masks(self._sum, add=add, subtract=subtract)
        self._result = self._sum
        self._begin(None, frozenset())

    def _check_threshold(self) -> None:
        t, n = self._config.threshold, self._config.n
        live = self._expected - self._gone
        if self._stage == SERIES_UNMASK:
            live |= self._received
        if len(live) < t:
            raise ProtocolAbort(
                f"only {len(live)} of {n} parties remain; threshold is {t}"
            )
