"""The seam between the inference protocol and a CKKS library (TenSEAL now).

The protocol needs few operations, listed here so another library can be swapped
in: OpenFHE was measured about 5x faster for the owner's scoring, but its wheel
imports only on Python 3.10, so only TenSEAL is implemented
(:mod:`protocols.ckks.tenseal_backend`). A backend must give these operations
exactly the semantics stated, because the flooding argument rests on them: every
owner operation before :meth:`OwnerContext.rerandomize` is exact ring arithmetic
(no rescaling, no rounding) except :meth:`OwnerContext.relinearize`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from protocols.ckks.params import ParameterSet

Values = npt.NDArray[np.float64]
Slots = npt.NDArray[np.complex128]


class Handle:
    """An owner-side ciphertext; each backend subclasses it to hold its own object."""

    __slots__ = ()


class BuyerKeys(ABC):
    """The buyer's key material: the only holder of the secret key."""

    @abstractmethod
    def public_context(self) -> bytes:
        """The context for the owner: parameters, public key and, for depth 2, the
        relinearisation key; never the secret key, never Galois keys."""

    @abstractmethod
    def encrypt(self, values: Values) -> bytes:
        """One serialised ciphertext of at most ``slots`` values at the global scale."""

    @abstractmethod
    def decrypt(self, ciphertext: bytes, count: int) -> Values:
        """The ``count`` real slot values of one owner result (validated first)."""


class OwnerContext(ABC):
    """The owner's view of a buyer's validated public context."""

    @property
    @abstractmethod
    def digest(self) -> bytes:
        """SHA-256 of the context as received; batches are bound to it."""

    @abstractmethod
    def load(self, ciphertext: bytes, count: int) -> Handle:
        """Deserialise one buyer ciphertext of ``count`` values, refusing anything but
        a fresh size-2 ciphertext at the top level and the global scale."""

    @abstractmethod
    def zero(self, scale_bits: int) -> Handle:
        """A fresh encryption of zero at the top level and scale ``2**scale_bits``."""

    @abstractmethod
    def dot(self, handles: Sequence[Handle], weights: Values, bias: float) -> Handle:
        """``sum_j round(w_j 2**weight_scale_bits) * ct_j`` plus ``bias`` at the
        result's scale; exact."""

    @abstractmethod
    def square(self, handle: Handle) -> Handle:
        """The tensor square (a size-3 ciphertext); exact."""

    @abstractmethod
    def times(self, handle: Handle, value: float, scale_bits: int) -> Handle:
        """Product with ``round(value * 2**scale_bits)``; exact."""

    @abstractmethod
    def add(self, handles: Sequence[Handle], constant: float) -> Handle:
        """Sum of ciphertexts of one scale, plus ``constant`` at that scale; exact."""

    @abstractmethod
    def relinearize(self, handle: Handle) -> Handle:
        """Size 3 -> 2 with the buyer's relinearisation key (adds key-switch error)."""

    @abstractmethod
    def rerandomize(self, handle: Handle) -> Handle:
        """Add a fresh encryption of zero under the buyer's public key."""

    @abstractmethod
    def add_slots(self, handle: Handle, slots: Slots) -> Handle:
        """Add complex slot values, encoded at the ciphertext's scale."""

    @abstractmethod
    def rescale(self, handle: Handle) -> Handle:
        """Divide by the last data prime (rounding): only ever after flooding."""

    @abstractmethod
    def serialize(self, handle: Handle, count: int) -> bytes:
        """The result in the form the buyer's :meth:`BuyerKeys.decrypt` reads."""


class CkksBackend(ABC):
    """A CKKS library: key generation for buyers, context loading for owners."""

    name: str

    @abstractmethod
    def generate(self, params: ParameterSet) -> BuyerKeys:
        """Fresh keys for ``params`` (the library's own CSPRNG draws them)."""

    @abstractmethod
    def open(self, params: ParameterSet, context: bytes) -> OwnerContext:
        """Validate a buyer's public context for ``params`` and load it."""

    @abstractmethod
    def max_ciphertext_bytes(self, params: ParameterSet, limbs: int) -> int:
        """The largest serialised size of one ciphertext with ``limbs`` data primes."""

    @abstractmethod
    def max_context_bytes(self, params: ParameterSet) -> int:
        """The largest serialised size of a public context for ``params``."""
