"""Per-worker call rates: a worker calling faster than its rate is refused (retryably) while
other workers are served as usual."""

from __future__ import annotations

import pytest

from swarm.coordinator.throttle import IDLE_FORGET_S, CallThrottle
from swarm.protocol import messages as m
from swarm.protocol.errors import OverloadedError, TransportError, error_for_code
from swarm.protocol.service import WorkerClient, open_channel
from tests.conftest import signed_registration, start_live_coordinator, stop_live_coordinator


def test_a_burst_then_the_sustained_rate() -> None:
    throttle = CallThrottle(rate_per_s=2.0, burst=3)
    for _ in range(3):
        throttle.take("a", "worker a", now=100.0)
    with pytest.raises(OverloadedError, match="more than 2 calls a second"):
        throttle.take("a", "worker a", now=100.0)
    throttle.take("b", "worker b", now=100.0)  # others are not held back
    throttle.take("a", "worker a", now=100.5)  # half a second: one call more
    with pytest.raises(OverloadedError):
        throttle.take("a", "worker a", now=100.6)


def test_a_refused_call_spends_nothing_and_idle_keys_are_forgotten() -> None:
    throttle = CallThrottle(rate_per_s=1.0, burst=1)
    throttle.take("a", "a", now=0.0)
    for _ in range(5):  # hammering while refused does not dig the hole deeper
        with pytest.raises(OverloadedError):
            throttle.take("a", "a", now=0.5)
    throttle.take("a", "a", now=1.01)
    throttle.take("b", "b", now=1.01)
    throttle.take("c", "c", now=1.02 + IDLE_FORGET_S)
    assert len(throttle) == 1


def test_rate_zero_means_no_limit() -> None:
    throttle = CallThrottle(rate_per_s=0, burst=1)
    for _ in range(1000):
        throttle.take("a", "a")


def test_the_client_retries_a_throttled_call() -> None:
    error = error_for_code("RESOURCE_EXHAUSTED", "throttled: worker w made more than 5 calls")
    assert isinstance(error, OverloadedError) and isinstance(error, TransportError)


def test_a_worker_over_its_rate_is_refused_and_others_are_served(tmp_path) -> None:  # type: ignore[no-untyped-def]
    live = start_live_coordinator(tmp_path, worker_rpc_rate=0.5, worker_rpc_burst=3)
    try:
        with open_channel(live.target) as channel:
            client = WorkerClient(channel)
            busy = client.register_worker(signed_registration()).session
            calm = client.register_worker(signed_registration()).session
            for _ in range(3):
                client.heartbeat(m.HeartbeatRequest(session=busy))
            with pytest.raises(OverloadedError, match="throttled"):
                client.heartbeat(m.HeartbeatRequest(session=busy))
            with pytest.raises(OverloadedError):
                client.lease_task(m.LeaseTaskRequest(session=busy))
            assert client.heartbeat(m.HeartbeatRequest(session=calm)).heartbeat_interval_s > 0
        codes = live.services.servicer.rpc_stats()["Heartbeat"].codes
        assert codes["RESOURCE_EXHAUSTED"] == 1 and codes["OK"] == 4
    finally:
        stop_live_coordinator(live)
