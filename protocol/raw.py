"""The wire messages as protobuf classes, and an asyncio stub, for tools that must not pay
for the dataclass layer of `messages`.

The load generator of `swarm bench coordinator` simulates thousands of workers in one
process; converting every message to and from dataclasses would make it, not the coordinator,
the bottleneck. Everything else speaks `messages` through `service`.
"""

from __future__ import annotations

from typing import Any

import grpc

from swarm.protocol.generated import worker_pb2 as wire
from swarm.protocol.generated import worker_pb2_grpc as _stubs
from swarm.protocol.service import CHANNEL_OPTIONS
from swarm.protocol.tls import SELF_SIGNED_NAME

__all__ = ["async_channel", "async_stub", "wire"]


def async_channel(target: str, certificate_pem: bytes | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `HOST:PORT` with swarm's message limits: TLS trusting exactly
    `certificate_pem` (a coordinator's self-signed certificate), or plaintext without it."""
    if certificate_pem is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates=certificate_pem),
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", SELF_SIGNED_NAME)],
    )


def async_stub(channel: grpc.aio.Channel) -> Any:
    """`WorkerService`'s asyncio stub over `channel`: methods take and return `wire` messages."""
    return _stubs.WorkerServiceStub(channel)
