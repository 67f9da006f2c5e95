"""The client's transport: jittered backoff, retries that stop on shutdown, re-registration."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.client.settings import parse_targets
from swarm.client.transport import Stopped, Transport, backoff_delays
from swarm.protocol import messages as m
from swarm.protocol.errors import OverloadedError, ProtocolError, TransportError
from tests.conftest import (
    LiveCoordinator,
    signed_registration,
    start_live_coordinator,
    stop_live_coordinator,
)


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


def test_coordinator_lists_are_parsed_in_order_without_duplicates() -> None:
    assert parse_targets(" a.example:50051, 10.0.0.2:7,a.example:50051,") == [
        "a.example:50051",
        "10.0.0.2:7",
    ]
    assert parse_targets("[::1]:50051") == ["[::1]:50051"]
    for bad in ("", " , ", "a.example", "a.example:0", "a.example:http", ":50051", "a:1,b"):
        with pytest.raises(ValueError):
            parse_targets(bad)


def test_a_dead_coordinator_is_passed_over_at_once_for_the_next(
    live_coordinator: LiveCoordinator,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    # A backoff of up to a minute would show: failing over must not wait for it.
    link = Transport(
        f"{dead},{live_coordinator.target}",
        register_request(),
        stop=threading.Event(),
        rpc_timeout_s=1.0,
        max_backoff_s=60.0,
    )
    try:
        began = time.monotonic()
        link.register()
        assert time.monotonic() - began < 10.0
        assert link.target == live_coordinator.target
        assert link.failovers == 1
        assert link.lease_task().task is None  # and stays with the one that answers
        assert link.failovers == 1
    finally:
        link.close()


def test_pauses_start_only_once_every_coordinator_has_failed() -> None:
    link = Transport("127.0.0.1:1,127.0.0.1:2", register_request(), stop=threading.Event())
    sleeps: list[float] = []
    link._stop.wait = lambda delay: sleeps.append(delay) or False  # type: ignore[method-assign]
    link._rng = HighestRandom()
    try:
        for attempt in range(6):
            link.pause(attempt)
    finally:
        link.close()
    # Attempts 0, 2 and 4 move on to the other coordinator; 1, 3 and 5 back off, doubling.
    assert sleeps == [0.5, 1.0, 2.0]


def test_a_session_carries_over_to_another_coordinator_on_the_same_database(
    tmp_path: Path,
) -> None:
    shared = {"db": f"sqlite:///{tmp_path / 'swarm.db'}", "blob_dir": tmp_path / "blobs"}
    first = start_live_coordinator(tmp_path / "a", **shared)
    second = start_live_coordinator(tmp_path / "b", **shared)
    link = Transport(
        f"{first.target},{second.target}",
        register_request(),
        stop=threading.Event(),
        rpc_timeout_s=1.0,
    )
    try:
        session = link.register().session
        stop_live_coordinator(first)
        assert link.lease_task().task is None
        assert link.target == second.target and link.failovers == 1
        # The second coordinator knew the session: no second registration was needed.
        assert link.registration is not None and link.registration.session == session
        assert link.heartbeat([]).heartbeat_interval_s > 0
    finally:
        link.close()
        stop_live_coordinator(second)


def test_an_overloaded_coordinator_refuses_at_once_and_the_call_is_retried(
    tmp_path: Path,
) -> None:
    """Beyond `max_concurrent_rpcs` calls in progress the server refuses new ones at once;
    the client sees a retryable `OverloadedError` and gets through once a slot frees."""
    live = start_live_coordinator(tmp_path / "c", max_concurrent_rpcs=1, lease_long_poll_s=1.0)
    waiting = Transport(live.target, register_request(), stop=threading.Event())
    link = Transport(live.target, register_request(), stop=threading.Event(), max_backoff_s=0.2)
    try:
        waiting.register()
        link.register()
        holder = threading.Thread(target=waiting.lease_task)  # held open for 1 s: the one slot
        holder.start()
        time.sleep(0.3)
        with pytest.raises(OverloadedError, match="limit of calls in progress"):
            link._rpc(
                lambda client: client.lease_task(
                    m.LeaseTaskRequest(session=link.session), timeout_s=5.0
                )
            )
        began = time.monotonic()
        assert link.lease_task().task is None  # retried until the slot was free
        assert time.monotonic() - began > 0.2
        holder.join()
    finally:
        waiting.close()
        link.close()
        stop_live_coordinator(live)
