"""Protocol version negotiation."""

from __future__ import annotations

import pytest

from swarm.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    VersionMismatchError,
    check_protocol_version,
)
from swarm.protocol.errors import ProtocolError, error_for_code


def test_this_package_speaks_a_supported_version() -> None:
    assert PROTOCOL_VERSION in SUPPORTED_PROTOCOL_VERSIONS
    check_protocol_version(PROTOCOL_VERSION)


@pytest.mark.parametrize("version", [0, 99])
def test_unsupported_versions_are_refused_naming_the_supported_ones(version: int) -> None:
    with pytest.raises(VersionMismatchError) as raised:
        check_protocol_version(version)
    message = str(raised.value)
    assert f"protocol version {version} is not supported" in message
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOL_VERSIONS))
    assert f"version(s) {supported}" in message
    assert isinstance(raised.value, ProtocolError)


def test_an_old_client_is_told_to_upgrade_itself() -> None:
    with pytest.raises(VersionMismatchError, match="pip install -U swarmclient"):
        check_protocol_version(0)


def test_a_newer_client_is_told_the_coordinator_is_old() -> None:
    with pytest.raises(VersionMismatchError, match="ask its operator to upgrade"):
        check_protocol_version(99)


@pytest.mark.parametrize("version", [0, 99])
def test_the_refusal_arrives_at_the_client_as_a_version_mismatch(version: int) -> None:
    with pytest.raises(VersionMismatchError) as raised:
        check_protocol_version(version)
    received = error_for_code(raised.value.grpc_code, str(raised.value))
    assert type(received) is VersionMismatchError
    assert str(received) == str(raised.value)
