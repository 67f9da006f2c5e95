"""--max-upload-mbps over a real gRPC link: a result reaches the coordinator at the capped rate."""

from __future__ import annotations

import threading
import time

import pytest

from swarm.client.bandwidth import TokenBucket
from swarm.client.transport import Transport
from swarm.protocol.limits import CHUNK_BYTES
from tests.integration.test_bad_input import (  # noqa: F401 (harness: the fixture)
    Harness,
    harness,
    lease,
    make_header,
    make_payload,
    register,
)

pytestmark = pytest.mark.integration

RATE_MBPS = 0.1  # 12.5 kB/s: the micro job's ~55 kB update takes about 4.4 s


def test_upload_keeps_to_the_cap(harness: Harness) -> None:  # noqa: F811
    volunteer = register(harness.client)
    task = lease(harness.client, volunteer)
    payload = make_payload(harness.shapes)
    header = make_header(volunteer, task.task_id, payload)
    link = Transport(
        harness.live.target,
        lambda: None,  # type: ignore[arg-type,return-value]  (never registers: no session use)
        stop=threading.Event(),
        upload=TokenBucket(RATE_MBPS),
    )
    try:
        began = time.monotonic()
        reply = link.submit_result(header, payload, CHUNK_BYTES, timeout_s=60.0)
        elapsed = time.monotonic() - began
    finally:
        link.close()
    assert reply.accepted, reply.message
    measured_mbps = len(payload) * 8 / elapsed / 1e6
    # Never faster than the cap (the bucket starts empty); within 10% of it.
    assert 0.9 * RATE_MBPS <= measured_mbps <= RATE_MBPS, (measured_mbps, elapsed)
