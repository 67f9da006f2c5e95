"""Protocol versions: what this package speaks and what a coordinator accepts."""

from __future__ import annotations

from swarm.protocol.errors import VersionMismatchError

PROTOCOL_VERSION = 5
SUPPORTED_PROTOCOL_VERSIONS = frozenset({5})


def check_protocol_version(version: int) -> None:
    """Raise `VersionMismatchError` with an actionable message if `version` is unsupported."""
    if version in SUPPORTED_PROTOCOL_VERSIONS:
        return
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOL_VERSIONS))
    advice = (
        "upgrade swarmclient (pip install -U swarmclient)"
        if version < min(SUPPORTED_PROTOCOL_VERSIONS)
        else "this coordinator is older than your client; ask its operator to upgrade"
    )
    raise VersionMismatchError(
        f"protocol version {version} is not supported; this coordinator supports "
        f"version(s) {supported}: {advice}"
    )
