"""gRPC plumbing shared by every party: mTLS channels and servers, chunked streams,
caller identity from certificates, deadlines, and domain-error <-> status mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from cleanroom import errors
from cleanroom.pki import Principal, TlsIdentity, principal_from_cert
from proto import cleanroom_pb2 as pb

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20
"""Streamed payloads are cut into 1 MiB chunks, well under the message limit."""

MAX_MESSAGE_BYTES: Final = 8 << 20
MAX_ASSEMBLED_BYTES: Final = 2 << 30
"""A streamed payload may not exceed 2 GiB once reassembled."""

DEFAULT_DEADLINE: Final = 30.0

_ERROR_KEY: Final = "cleanroom-error"
_PATH_KEY: Final = "cleanroom-error-path"

_OPTIONS: Final = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

M = TypeVar("M", bound=Message)


# ----------------------------------------------------------------- channels --
def secure_channel(
    address: str, identity: TlsIdentity, *, server_name: str
) -> grpc.Channel:
    """A mutual-TLS channel to ``address``; its certificate names ``server_name``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )
    options = [*_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(address, credentials, options=options)


def secure_server(
    identity: TlsIdentity,
    address: str,
    *,
    max_workers: int = 64,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> tuple[grpc.Server, int]:
    """A gRPC server that requires a client certificate from the federation CA.

    Returns the server (not started) and the bound port (``address`` may use port 0).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        options=_OPTIONS,
        interceptors=list(interceptors),
    )
    credentials = grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise errors.ConfigError(f"cannot listen on {address}")
    return server, port


def caller(context: grpc.ServicerContext) -> Principal:
    """The authenticated caller, taken from its verified client certificate."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        raise errors.AuthError("no client certificate")
    return principal_from_cert(pem[0])


def require_role(context: grpc.ServicerContext, role: str) -> Principal:
    principal = caller(context)
    if principal.role != role:
        raise errors.AuthError(
            f"a {principal.role} certificate may not use the {role} API"
        )
    return principal


# ------------------------------------------------------------------ chunking --
def to_chunks(message: Message) -> Iterator[pb.Chunk]:
    """Serialize ``message`` and cut it into chunks; always yields at least one."""
    data = message.SerializeToString()
    view = memoryview(data)
    yield pb.Chunk(data=bytes(view[:CHUNK_BYTES]))
    for start in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
        yield pb.Chunk(data=bytes(view[start : start + CHUNK_BYTES]))


def from_chunks(chunks: Iterable[pb.Chunk], kind: type[M]) -> M:
    """Reassemble a message cut by ``to_chunks``; ProtocolError if it is malformed."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk.data
        if len(buffer) > MAX_ASSEMBLED_BYTES:
            raise errors.ProtocolError("streamed payload exceeds the 2 GiB limit")
    message = kind()
    try:
        message.ParseFromString(bytes(buffer))
    except DecodeError as exc:
        raise errors.ProtocolError(f"malformed {kind.__name__}") from exc
    return message


# ------------------------------------------------------------- error mapping --
_STATUS: Final[list[tuple[type[errors.CleanroomError], grpc.StatusCode]]] = [
    (errors.SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.PolicyRefusal, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ProtocolError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.CryptoError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AuditError, grpc.StatusCode.FAILED_PRECONDITION),
]

_BY_NAME: Final[dict[str, type[errors.CleanroomError]]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.CleanroomError)
}


def abort_with(context: grpc.ServicerContext, exc: errors.CleanroomError) -> NoReturn:
    """End the RPC with the status for ``exc`` and enough metadata to rebuild it."""
    code = next(
        (status for cls, status in _STATUS if isinstance(exc, cls)),
        grpc.StatusCode.INTERNAL,
    )
    metadata: list[tuple[str, str]] = [(_ERROR_KEY, type(exc).__name__)]
    message = str(exc)
    if isinstance(exc, errors.SpecError):
        metadata.append((_PATH_KEY, exc.path))
        message = exc.problem
    context.set_trailing_metadata(metadata)
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


def servicer_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method: domain errors become gRPC statuses; nothing leaks."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            result = fn(self, request, context)
            if isinstance(result, Iterator):
                return _guard_stream(result, context)
            return result
        except errors.CleanroomError as exc:
            abort_with(context, exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _guard_stream(
    stream: Iterator[Any], context: grpc.ServicerContext
) -> Iterator[Any]:
    try:
        yield from stream
    except errors.CleanroomError as exc:
        abort_with(context, exc)


def raise_from_rpc(exc: grpc.RpcError, *, what: str) -> NoReturn:
    """Turn a failed call into the domain error the server raised, or TransportError."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    trailing = dict(exc.trailing_metadata() or ())
    name = trailing.get(_ERROR_KEY)
    if name in _BY_NAME:
        cls = _BY_NAME[name]
        if cls is errors.SpecError:
            raise errors.SpecError(trailing.get(_PATH_KEY, ""), details) from None
        if issubclass(cls, errors.PolicyRefusal):
            raise cls([details]) from None
        raise cls(details) from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise errors.TransportError(f"{what}: {code.name.lower()}: {details}") from None
    if code == grpc.StatusCode.PERMISSION_DENIED:
        raise errors.AuthError(f"{what}: {details}") from None
    raise errors.TransportError(f"{what} failed: {code.name}: {details}") from None
