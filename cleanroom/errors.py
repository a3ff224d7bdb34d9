"""The one exception tree: every error cleanroom raises derives from CleanroomError.

CleanroomError
├── ConfigError          a config file, CLI argument or local setup is wrong
├── SpecError            a job spec is invalid (carries the field path)
├── DatasetError         a dataset is missing, changed, or fails its schema
├── PolicyRefusal        a node's policy refuses a job (carries the reasons)
│   └── QuotaExceeded    the job would exceed a quota or privacy budget
├── AuthError            an identity or certificate is missing or not allowed
├── CryptoError          cryptographic verification failed (opaque on purpose)
│   ├── InvalidSignature a signature does not verify
│   └── EnvelopeError    an envelope is tampered, replayed or not for us
├── ProtocolError        a protocol stage got input it must not accept
│   └── ProtocolAbort    the protocol cannot finish (e.g. below threshold)
├── TransportError       a remote party is unreachable or a deadline passed
├── StoreError           the state store failed
│   └── NotFound         the requested object does not exist
├── AuditError           an audit log or proof does not verify
└── SandboxError         sandboxed code could not run or its output was refused
"""

from __future__ import annotations

from collections.abc import Sequence


class CleanroomError(Exception):
    """Base of every error raised by cleanroom."""


class ConfigError(CleanroomError):
    """A configuration file, CLI argument or local setup is wrong."""


class SpecError(CleanroomError):
    """A job spec is invalid; ``path`` names the field (e.g. ``inputs[1].dataset``)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class DatasetError(CleanroomError):
    """A dataset file is missing, changed since it was loaded, or fails its schema."""


class PolicyRefusal(CleanroomError):
    """A node's policy refuses a job; ``reasons`` lists each rule that failed."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("; ".join(self.reasons) or "refused by policy")


class QuotaExceeded(PolicyRefusal):
    """The job would exceed a quota or a differential-privacy budget."""


class AuthError(CleanroomError):
    """An identity is missing, from another federation, or not allowed this action."""


class CryptoError(CleanroomError):
    """Cryptographic verification failed. Deliberately says little about why."""


class InvalidSignature(CryptoError):
    """A signature does not verify under the expected key."""


class EnvelopeError(CryptoError):
    """An envelope is tampered with, replayed, out of order, or not addressed to us."""


class ProtocolError(CleanroomError):
    """A protocol stage got input it must refuse (wrong stage, size, key, signature)."""


class ProtocolAbort(ProtocolError):
    """The protocol cannot complete, e.g. too few parties remain for the threshold."""


class TransportError(CleanroomError):
    """A remote party could not be reached or did not answer before the deadline."""


class StoreError(CleanroomError):
    """The state store failed."""


class NotFound(StoreError):
    """The requested job, node or result does not exist."""


class AuditError(CleanroomError):
    """An audit log, tree head or proof does not verify."""


class SandboxError(CleanroomError):
    """Sandboxed code could not run, or its output was refused.

    ``cpu_s`` is the CPU time the code had used when its run failed (0 when it never
    started or the runner could not tell), so the node can bill a failed run too.
    """

    def __init__(self, message: str, *, cpu_s: float = 0.0) -> None:
        super().__init__(message)
        self.cpu_s = cpu_s
