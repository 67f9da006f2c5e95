"""The client's transport: jittered backoff, retries that stop on shutdown, re-registration."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.client.transport import Stopped, Transport, backoff_delays
from swarm.protocol import messages as m
from swarm.protocol.errors import ProtocolError, TransportError
from tests.conftest import LiveCoordinator, signed_registration


class HighestRandom(random.Random):
    """Always draws the top of the range, to expose the backoff's upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def register_request() -> Callable[[], m.RegisterWorkerRequest]:
    """What the worker gives its transport: a registration signed afresh on each call."""
    key = Ed25519PrivateKey.generate()
    return lambda: signed_registration(key, name="transport-test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


@pytest.fixture
def unreachable(stop: threading.Event) -> Iterator[Transport]:
    """A transport to a loopback port where nothing listens, with short RPC deadlines."""
    link = Transport(f"127.0.0.1:{free_port()}", register_request(), stop=stop, rpc_timeout_s=0.2)
    try:
        yield link
    finally:
        link.close()


def test_backoff_upper_bound_doubles_up_to_the_cap() -> None:
    delays = backoff_delays(0.5, 10.0, HighestRandom())
    assert [next(delays) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_delays_stay_within_full_jitter_bounds() -> None:
    base, cap = 0.25, 6.0
    delays = backoff_delays(base, cap, random.Random(1234))
    samples = [next(delays) for _ in range(200)]
    for attempt, delay in enumerate(samples):
        assert 0.0 <= delay <= min(cap, base * 2**attempt)
    # Jitter: the delays are spread out, not a fixed schedule.
    assert len(set(samples)) == len(samples)
    # They grow: late delays are on average far longer than early ones.
    assert sum(samples[-50:]) / 50 > 10 * sum(samples[:3]) / 3


def test_backoff_stays_at_the_cap_after_very_many_attempts() -> None:
    delays = backoff_delays(0.5, 30.0, HighestRandom())
    samples = [next(delays) for _ in range(5000)]
    assert samples[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(samples[6:]) == {30.0}


def test_retry_returns_after_transient_transport_errors() -> None:
    link = Transport(
        f"127.0.0.1:{free_port()}",
        register_request(),
        stop=threading.Event(),
        max_backoff_s=0.01,
    )
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransportError("coordinator restarting")
        return "done"

    try:
        assert link.retry("Flaky", flaky) == "done"
    finally:
        link.close()
    assert len(calls) == 3


def test_retry_does_not_retry_other_errors(unreachable: Transport) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ProtocolError("bad request")

    with pytest.raises(ProtocolError):
        unreachable.retry("Broken", broken)
    assert len(calls) == 1


def test_retry_against_nothing_listening_stops_when_asked(
    unreachable: Transport, stop: threading.Event
) -> None:
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    with pytest.raises(Stopped):
        unreachable.register()
    elapsed = time.monotonic() - began
    assert 0.4 < elapsed < 3.0
    assert unreachable.registration is None


def test_retry_after_stop_makes_no_call() -> None:
    stop = threading.Event()
    stop.set()
    link = Transport(f"127.0.0.1:{free_port()}", register_request(), stop=stop)
    calls = []
    try:
        with pytest.raises(Stopped):
            link.retry("Anything", lambda: calls.append(1))
    finally:
        link.close()
    assert calls == []


def test_call_registers_again_when_the_session_is_forgotten(
    live_coordinator: LiveCoordinator,
) -> None:
    link = Transport(live_coordinator.target, register_request(), stop=threading.Event())
    try:
        first = link.register()
        # As after a coordinator reset: our session no longer exists there.
        link.registration = dataclasses.replace(
            first, session=m.Session(worker_id="wk-forgotten", token=b"stale")
        )
        response = link.lease_task()
        assert response.task is None
        assert "no tasks" in response.reason
        assert link.registration is not None
        # The same key is the same worker, under a fresh session token.
        assert link.registration.session.worker_id == first.session.worker_id
        assert link.registration.session.token not in {b"stale", first.session.token}
    finally:
        link.close()


def test_an_unreachable_coordinator_is_explained_with_what_to_check(stop: threading.Event) -> None:
    heard: list[str] = []
    target = f"127.0.0.1:{free_port()}"
    link = Transport(
        target, register_request(), stop=stop, rpc_timeout_s=0.2, on_unreachable=heard.append
    )
    threading.Timer(0.5, stop.set).start()
    try:
        with pytest.raises(Stopped):
            link.register()
    finally:
        link.close()
    assert heard, "no explanation was given"
    assert f"cannot reach the coordinator at {target}" in heard[0]
    assert "gRPC port" in heard[0] and "firewall" in heard[0]
