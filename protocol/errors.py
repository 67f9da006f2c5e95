"""The swarm exception tree, shared by every package.

    SwarmError
     ├── ConfigError              a setting or argument is invalid (also a ValueError)
     ├── ProtocolError            a message is malformed or breaks the protocol
     │    ├── VersionMismatchError    the peer speaks an unsupported protocol version
     │    ├── MessageTooLargeError    a message or payload exceeds its limit
     │    └── IntegrityError          bytes do not match their SHA-256 or signature
     ├── NotFoundError            an unknown task, job, worker or blob
     ├── PermissionDeniedError    the caller may not act on that object
     ├── UnauthenticatedError     no valid worker session
     ├── RateLimitedError         too many requests (or failed attempts); retry later
     ├── CompressionError         a payload cannot be encoded or decoded
     ├── SchedulingError          an illegal job or task state change
     ├── CertificateMismatchError the coordinator's TLS certificate is not the trusted one
     └── TransportError           the peer could not be reached (retryable)

Each class names the gRPC status code it maps to, as a string, so this module does not import
grpc: the servicer adapter aborts with that code and the client maps codes back to classes.
"""

from __future__ import annotations


class SwarmError(Exception):
    """Root of every error swarm raises on purpose."""

    grpc_code: str = "INTERNAL"


class ConfigError(SwarmError, ValueError):
    """A setting, flag or request field is invalid; the message names it and the allowed range.

    `param`: the request field at fault, when the message does not start with its name.
    """

    grpc_code = "INVALID_ARGUMENT"

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ProtocolError(SwarmError):
    """A peer sent something the protocol does not allow."""

    grpc_code = "INVALID_ARGUMENT"


class VersionMismatchError(ProtocolError):
    """The peer speaks a protocol version this side does not support."""

    grpc_code = "FAILED_PRECONDITION"


class MessageTooLargeError(ProtocolError):
    """A message or streamed payload is larger than its limit."""

    grpc_code = "RESOURCE_EXHAUSTED"


class IntegrityError(ProtocolError):
    """Bytes do not match the SHA-256 or signature they came with."""

    grpc_code = "DATA_LOSS"


class NotFoundError(SwarmError):
    """The task, job, worker or blob does not exist (or no longer does)."""

    grpc_code = "NOT_FOUND"


class PermissionDeniedError(SwarmError):
    """The caller is authenticated but may not act on this object."""

    grpc_code = "PERMISSION_DENIED"


class UnauthenticatedError(SwarmError):
    """The worker session is missing, unknown or revoked; register again."""

    grpc_code = "UNAUTHENTICATED"


class RateLimitedError(SwarmError):
    """The caller sent too many requests, or too many failed attempts; `retry_after_s` says
    when to try again."""

    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str = "", *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CompressionError(SwarmError):
    """A payload could not be encoded or decoded."""

    grpc_code = "INVALID_ARGUMENT"


class SchedulingError(SwarmError):
    """A job, round or task cannot make the requested state change."""

    grpc_code = "FAILED_PRECONDITION"


class TransportError(SwarmError):
    """The peer could not be reached or did not answer in time; safe to retry."""

    grpc_code = "UNAVAILABLE"


class OverloadedError(TransportError):
    """The coordinator has as many calls in progress as it allows and refused this one at
    once; safe to retry after a backoff (or at another coordinator)."""

    grpc_code = "RESOURCE_EXHAUSTED"


class CertificateMismatchError(SwarmError):
    """The coordinator presented a TLS certificate other than the one this client trusts:
    never retried, the client stops (see `swarm.protocol.tls`)."""

    grpc_code = "UNAUTHENTICATED"


THROTTLED_PREFIX = "throttled:"
"""How the coordinator's refusal of a worker that calls too often begins (RESOURCE_EXHAUSTED,
retryable like an overload)."""

OVERLOADED_DETAILS = "concurrent rpc limit exceeded"
"""What gRPC's server says (lowercased) when it refuses a call over `maximum_concurrent_rpcs`."""

_BY_CODE: dict[str, type[SwarmError]] = {
    "INVALID_ARGUMENT": ProtocolError,
    "FAILED_PRECONDITION": SchedulingError,
    "RESOURCE_EXHAUSTED": MessageTooLargeError,
    "DATA_LOSS": IntegrityError,
    "NOT_FOUND": NotFoundError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "UNAVAILABLE": TransportError,
    "DEADLINE_EXCEEDED": TransportError,
}


def error_for_code(code_name: str, message: str) -> SwarmError:
    """Build the exception a client raises for a gRPC status code name."""
    if code_name == "FAILED_PRECONDITION" and "protocol version" in message:
        return VersionMismatchError(message)
    if code_name == "RESOURCE_EXHAUSTED" and message.startswith(THROTTLED_PREFIX):
        return OverloadedError(message)
    if code_name == "RESOURCE_EXHAUSTED" and OVERLOADED_DETAILS in message.lower():
        return OverloadedError(
            "the coordinator is at its limit of calls in progress; retrying after a backoff"
        )
    return _BY_CODE.get(code_name, SwarmError)(message)
