"""SecAgg+ job parameters: parties, threshold, vector shape, ring, neighbour graph."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

import numpy as np

from cleanroom.errors import ConfigError
from protocols.party import COORDINATOR
from protocols.secagg.bounds import (
    DEFAULT_CORRUPTION,
    DEFAULT_DROPOUT,
    sound_parameters,
)

GraphKind = Literal["complete", "k-regular"]

MIN_PARTIES: Final = 3
"""With two parties the sum would reveal each one's input to the other."""
MAX_PARTIES: Final = 2**16 - 1
MAX_NAME_BYTES: Final = 255
MAX_VECTOR_LENGTH: Final = 2**28
GRAPH_SEED_BYTES: Final = 32
_DIGEST_DOMAIN: Final = b"cleanroom/secagg/v1/config\x00"


def smallest_ring(n: int, max_input: int | None) -> Literal[32, 64]:
    """2^32 if ``n`` inputs of at most ``max_input`` cannot wrap it, else 2^64."""
    if isinstance(max_input, bool) or not isinstance(max_input, int):
        return 64  # none declared, or malformed: validation then refuses it clearly
    return 32 if 0 < max_input and n * max_input < 2**32 else 64


def default_threshold(neighbourhood_size: int) -> int:
    """More than two thirds of a closed neighbourhood (Bonawitz et al.'s active bound).

    Above m/2 a malicious server cannot collect both secrets of one party from
    honest clients; above 2m/3 that still holds if it colludes with fewer than
    m/3 of the party's neighbours. The price is tolerating < m/3 dropouts per
    neighbourhood; pass a lower threshold (> m/2) explicitly to trade the other way.
    """
    return 2 * neighbourhood_size // 3 + 1


@dataclass(frozen=True)
class SecAggConfig:
    """Validated, immutable parameters every party of one SecAgg+ run must share.

    Build it with :meth:`create`, which sorts the parties and fills defaults. Each
    party's shares go to its closed neighbourhood (itself plus ``degree`` peers);
    ``threshold`` of them recover a secret. In a complete graph that is every party,
    so the sum survives any ``n - threshold`` dropouts.

    A ``k-regular`` graph is drawn from ``graph_seed`` (32 bytes), which the caller
    derives from inputs the coordinator cannot choose (``graph.graph_seed_from``:
    the analyst's signed request); see graph.py for what that buys. Its default
    degree and threshold are Bell et al.'s sound parameters for the Harary graph
    (``bounds.sound_parameters``) at 5% corrupt and 5% dropped parties, privacy
    failure <= 2^-40 and abort <= 2^-20: e.g. (18, 13) at 100 parties, (52, 37) at
    1,000, (62, 44) at 10,000, (72, 51) at 100,000; where no sparse degree saves a
    third of the complete graph's work, the default is the complete graph (degree
    ``n - 1``) with its smallest threshold that keeps both secrets of an honest
    party apart. Pass ``corruption``/``dropout`` to plan for other rates, or an
    explicit ``degree``/``threshold`` (validated only structurally) to override.
    """

    session_id: str
    parties: tuple[str, ...]
    threshold: int
    vector_length: int
    modulus_bits: Literal[32, 64]
    graph: GraphKind
    degree: int
    max_input: int | None = None
    """Public bound on every input element, if declared: clients refuse larger
    values, and the ring must hold ``n * max_input`` without wrapping."""
    graph_seed: bytes | None = field(default=None, repr=False)
    """The k-regular graph's public seed (required for it, refused otherwise)."""
    key_scope: str | None = None
    """Set for one of a job's series of sessions (e.g. its training rounds): keys
    are then authenticated by channel-key certificates signed once under this
    scope, not by a signature per session (``keys``' module docstring). Every
    client must hold ``keys.ChannelKeys`` of this scope."""

    @classmethod
    def create(
        cls,
        *,
        session_id: str,
        parties: Iterable[str],
        vector_length: int,
        threshold: int | None = None,
        modulus_bits: Literal[32, 64] | None = None,
        graph: GraphKind = "complete",
        degree: int | None = None,
        max_input: int | None = None,
        graph_seed: bytes | None = None,
        key_scope: str | None = None,
        corruption: float = DEFAULT_CORRUPTION,
        dropout: float = DEFAULT_DROPOUT,
    ) -> SecAggConfig:
        """Sort ``parties``, fill the defaults, then validate.

        Without ``modulus_bits`` the ring is the smallest that holds the sum: 2^32
        when a declared ``max_input`` times the party count fits below 2^32 (half
        the masking work and bytes), else 2^64. ``corruption`` and ``dropout`` are
        the planned rates behind a k-regular graph's default degree and threshold;
        they are not part of the configuration itself.
        """
        names = list(parties)
        if not all(isinstance(p, str) for p in names):
            raise ConfigError("party names must be strings")
        if len(set(names)) != len(names):
            raise ConfigError("party names must be unique")
        n = len(names)
        if graph == "k-regular" and n >= MIN_PARTIES and None in (degree, threshold):
            sound_degree, sound_threshold = sound_parameters(n, corruption, dropout)
            if degree is None:
                degree = sound_degree
            if threshold is None:
                threshold = (
                    sound_threshold
                    if degree == sound_degree
                    else default_threshold(degree + 1)
                )
        if degree is None:
            degree = n - 1
        if threshold is None:
            threshold = default_threshold(degree + 1)
        if modulus_bits is None:
            modulus_bits = smallest_ring(n, max_input)
        return cls(
            session_id=session_id,
            parties=tuple(sorted(names)),
            threshold=threshold,
            vector_length=vector_length,
            modulus_bits=modulus_bits,
            graph=graph,
            degree=degree,
            max_input=max_input,
            graph_seed=graph_seed,
            key_scope=key_scope,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, str) or not self.session_id:
            raise ConfigError("session_id must be a non-empty string")
        if len(self.session_id.encode()) > MAX_NAME_BYTES:
            raise ConfigError(f"session_id is longer than {MAX_NAME_BYTES} bytes")
        self._check_parties()
        n = len(self.parties)
        _check_int("vector_length", self.vector_length, 1, MAX_VECTOR_LENGTH)
        if self.modulus_bits not in (32, 64) or isinstance(self.modulus_bits, bool):
            raise ConfigError(f"modulus_bits must be 32 or 64, not {self.modulus_bits}")
        if self.graph not in ("complete", "k-regular"):
            raise ConfigError(
                f"graph must be 'complete' or 'k-regular', not {self.graph}"
            )
        _check_int("degree", self.degree, 2, n - 1)
        if self.graph == "complete" and self.degree != n - 1:
            raise ConfigError(f"a complete graph of {n} parties has degree {n - 1}")
        self._check_graph_seed()
        if self.key_scope is not None and not (
            isinstance(self.key_scope, str)
            and 0 < len(self.key_scope.encode()) <= MAX_NAME_BYTES
        ):
            raise ConfigError(
                f"key_scope must be a string of 1..{MAX_NAME_BYTES} bytes"
            )
        if (n * self.degree) % 2:
            raise ConfigError(
                f"no {self.degree}-regular graph on {n} parties exists (n*k is odd)"
            )
        if self.max_input is not None:
            _check_int("max_input", self.max_input, 1, 2**64 - 1)
            if n * self.max_input >> self.modulus_bits:
                raise ConfigError(
                    f"{n} inputs of up to {self.max_input} can wrap the "
                    f"{self.modulus_bits}-bit ring; use modulus_bits=64 or a "
                    "smaller bound"
                )
        m = self.neighbourhood_size
        _check_int("threshold", self.threshold, 2, MAX_PARTIES)
        if not m // 2 < self.threshold <= m:
            # An honest majority of share holders is what stops a malicious server
            # from collecting both the self-mask and the mask key of one party.
            raise ConfigError(
                f"threshold {self.threshold} must exceed half of the neighbourhood "
                f"size {m} and be at most {m}"
            )

    def _check_graph_seed(self) -> None:
        seed = self.graph_seed
        if self.graph == "complete":
            if seed is not None:
                raise ConfigError("a complete graph takes no graph_seed")
            return
        if seed is None:
            raise ConfigError(
                "a k-regular graph needs a graph_seed the coordinator cannot choose "
                "(see protocols.secagg.graph.graph_seed_from)"
            )
        if not isinstance(seed, bytes) or len(seed) != GRAPH_SEED_BYTES:
            raise ConfigError(f"graph_seed must be {GRAPH_SEED_BYTES} bytes")

    def _check_parties(self) -> None:
        if not isinstance(self.parties, tuple):
            raise ConfigError("parties must be a tuple; use SecAggConfig.create")
        if not MIN_PARTIES <= len(self.parties) <= MAX_PARTIES:
            raise ConfigError(
                f"SecAgg needs {MIN_PARTIES}..{MAX_PARTIES} parties, "
                f"got {len(self.parties)}"
            )
        for name in self.parties:
            if not isinstance(name, str) or not name:
                raise ConfigError("party names must be non-empty strings")
            if len(name.encode()) > MAX_NAME_BYTES:
                raise ConfigError(f"party name {name!r} is over {MAX_NAME_BYTES} bytes")
            if name == COORDINATOR:
                raise ConfigError(f"{COORDINATOR!r} names the coordinator, not a party")
        if list(self.parties) != sorted(set(self.parties)):
            raise ConfigError("parties must be sorted and unique")

    @property
    def n(self) -> int:
        """Number of parties."""
        return len(self.parties)

    @property
    def neighbourhood_size(self) -> int:
        """Share holders per party: the party itself plus its ``degree`` neighbours."""
        return self.degree + 1

    @property
    def dtype(self) -> np.dtype[Any]:
        """Vector element type; its wrap-around is arithmetic mod 2^modulus_bits."""
        return np.dtype(np.uint32 if self.modulus_bits == 32 else np.uint64)

    @property
    def element_bytes(self) -> int:
        """Bytes per vector element on the wire."""
        return self.modulus_bits // 8

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of every parameter; bound into signatures, keys and message headers.

        Two parties holding different configurations therefore fail at the first
        message rather than computing inconsistent masks.
        """
        h = hashlib.sha256(_DIGEST_DOMAIN)
        for part in (self.session_id, self.graph, *self.parties):
            raw = part.encode()
            h.update(len(raw).to_bytes(2, "big") + raw)
        for number in (self.threshold, self.vector_length, self.modulus_bits):
            h.update(number.to_bytes(8, "big"))
        h.update(self.degree.to_bytes(8, "big") + len(self.parties).to_bytes(8, "big"))
        if self.max_input is not None:
            h.update(b"max_input" + self.max_input.to_bytes(8, "big"))
        if self.graph_seed is not None:
            # Every advert is signed over this digest: a node's signature commits
            # it to the graph, and a party holding another seed fails at once.
            h.update(b"graph_seed" + self.graph_seed)
        if self.key_scope is not None:
            raw = self.key_scope.encode()
            h.update(b"key_scope" + len(raw).to_bytes(2, "big") + raw)
        return h.digest()


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, got {value}")
