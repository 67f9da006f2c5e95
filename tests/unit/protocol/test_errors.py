"""The exception tree and its mapping to and from gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from swarm import protocol
from swarm.protocol.errors import (
    CompressionError,
    ConfigError,
    IntegrityError,
    MessageTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SchedulingError,
    SwarmError,
    TransportError,
    UnauthenticatedError,
    VersionMismatchError,
    error_for_code,
)

ERROR_CLASSES = [
    obj
    for name in protocol.__all__
    if isinstance(obj := getattr(protocol, name), type) and issubclass(obj, BaseException)
]


def test_every_exported_error_is_a_swarm_error() -> None:
    assert len(ERROR_CLASSES) == 13
    for cls in ERROR_CLASSES:
        assert issubclass(cls, SwarmError), cls


def test_config_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        raise ConfigError("batch_size must be >= 1")


@pytest.mark.parametrize(
    "cls", [VersionMismatchError, MessageTooLargeError, IntegrityError], ids=lambda c: c.__name__
)
def test_protocol_error_subclasses(cls: type[SwarmError]) -> None:
    assert issubclass(cls, ProtocolError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_grpc_code_names_a_real_status_code(cls: type[SwarmError]) -> None:
    assert isinstance(grpc.StatusCode[cls.grpc_code], grpc.StatusCode)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("INVALID_ARGUMENT", ProtocolError),
        ("FAILED_PRECONDITION", SchedulingError),
        ("RESOURCE_EXHAUSTED", MessageTooLargeError),
        ("DATA_LOSS", IntegrityError),
        ("NOT_FOUND", NotFoundError),
        ("PERMISSION_DENIED", PermissionDeniedError),
        ("UNAUTHENTICATED", UnauthenticatedError),
        ("UNAVAILABLE", TransportError),
        ("DEADLINE_EXCEEDED", TransportError),
        ("INTERNAL", SwarmError),
        ("UNKNOWN", SwarmError),
        ("NOT_A_CODE", SwarmError),
    ],
)
def test_error_for_code_maps_codes_to_classes(code: str, expected: type[SwarmError]) -> None:
    error = error_for_code(code, "what went wrong")
    assert type(error) is expected
    assert str(error) == "what went wrong"


def test_failed_precondition_about_the_protocol_version_is_a_version_mismatch() -> None:
    error = error_for_code("FAILED_PRECONDITION", "protocol version 0 is not supported")
    assert type(error) is VersionMismatchError


def test_version_wording_under_another_code_is_not_a_version_mismatch() -> None:
    error = error_for_code("INVALID_ARGUMENT", "protocol version field is missing")
    assert type(error) is ProtocolError


@pytest.mark.parametrize(
    "cls",
    [
        VersionMismatchError,
        MessageTooLargeError,
        IntegrityError,
        NotFoundError,
        PermissionDeniedError,
        UnauthenticatedError,
        SchedulingError,
        TransportError,
        ProtocolError,
    ],
    ids=lambda c: c.__name__,
)
def test_errors_survive_the_trip_through_a_status_code(cls: type[SwarmError]) -> None:
    message = "protocol version 9 is not supported" if cls is VersionMismatchError else "boom"
    assert type(error_for_code(cls.grpc_code, message)) is cls


@pytest.mark.parametrize("cls", [ConfigError, CompressionError], ids=lambda c: c.__name__)
def test_invalid_argument_errors_arrive_as_protocol_errors(cls: type[SwarmError]) -> None:
    assert isinstance(error_for_code(cls.grpc_code, "bad input"), ProtocolError)


def test_only_transport_errors_use_retryable_codes() -> None:
    retryable = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    for cls in ERROR_CLASSES:
        assert (cls.grpc_code in retryable) == issubclass(cls, TransportError), cls
