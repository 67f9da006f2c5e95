"""The swarm.v1 wire contract: messages, gRPC service plumbing, limits and the error tree."""

from swarm.protocol import messages
from swarm.protocol.errors import (
    CompressionError,
    ConfigError,
    IntegrityError,
    MessageTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    SchedulingError,
    SwarmError,
    TransportError,
    UnauthenticatedError,
    VersionMismatchError,
)
from swarm.protocol.version import (
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    check_protocol_version,
)

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "CompressionError",
    "ConfigError",
    "IntegrityError",
    "MessageTooLargeError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitedError",
    "SchedulingError",
    "SwarmError",
    "TransportError",
    "UnauthenticatedError",
    "VersionMismatchError",
    "check_protocol_version",
    "messages",
]
