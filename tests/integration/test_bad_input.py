"""Hostile and broken worker input against a live coordinator, over real gRPC.

Every case checks three things a volunteer or an operator would notice: the exact gRPC status
with a message that names the offending id, version or limit; that the coordinator keeps
serving; and that the job's state in the database (tasks, leases, rounds) and the blob store
did not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select

from swarm.compression import encode_payload
from swarm.compression.payload import FORMAT_VERSION
from swarm.coordinator.storage import Job, Lease, Round, Task, Worker
from swarm.protocol import messages as m
from swarm.protocol.errors import SwarmError, VersionMismatchError
from swarm.protocol.generated import worker_pb2 as pb
from swarm.protocol.generated import worker_pb2_grpc as pb_grpc
from swarm.protocol.limits import CHUNK_BYTES, MAX_MESSAGE_BYTES
from swarm.protocol.service import WorkerClient, open_channel
from swarm.protocol.version import PROTOCOL_VERSION

if TYPE_CHECKING:
    from tests.conftest import LiveCoordinator

from tests.conftest import MICRO_SPEC, signed_registration, wait_until_running

pytestmark = pytest.mark.integration

SPEC = MICRO_SPEC
METRICS = m.TaskMetrics(
    loss_first=5.5, loss_last=5.1, loss_mean=5.3, tokens=64, compute_s=0.2, steps=2
)
TIMEOUT_S = 30.0


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Volunteer:
    key: Ed25519PrivateKey
    session: m.Session


@dataclass
class Harness:
    live: LiveCoordinator
    job: Job
    channel: grpc.Channel
    client: WorkerClient

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(shape) for name, shape in self.job.param_shapes.items()}


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def register(client: WorkerClient, name: str = "tester") -> Volunteer:
    key = Ed25519PrivateKey.generate()
    reply = client.register_worker(signed_registration(key, name=name))
    return Volunteer(key=key, session=reply.session)


def lease(client: WorkerClient, volunteer: Volunteer) -> m.Task:
    reply = client.lease_task(m.LeaseTaskRequest(session=volunteer.session))
    assert reply.task is not None, reply.reason
    return reply.task


def make_payload(shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 1e-2) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        name: torch.randn(shape, generator=generator) * scale for name, shape in shapes.items()
    }
    return encode_payload(tensors, MICRO_SPEC.update_policy())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_header(
    volunteer: Volunteer,
    task_id: str,
    payload: bytes,
    *,
    sha256: str | None = None,
    size: int | None = None,
    signature: bytes | None = None,
    metrics: m.TaskMetrics = METRICS,
) -> m.ResultHeader:
    """A header for `payload`; each keyword overrides what an honest worker would send."""
    digest = sha256_hex(payload) if sha256 is None else sha256
    if signature is None:
        signature = volunteer.key.sign(m.result_signing_bytes(task_id, digest, metrics))
    return m.ResultHeader(
        session=volunteer.session,
        task_id=task_id,
        metrics=metrics,
        payload_sha256=digest,
        payload_size=len(payload) if size is None else size,
        signature=signature,
    )


def submit(harness: Harness, header: m.ResultHeader, payload: bytes) -> m.SubmitResultResponse:
    chunks = [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)]
    return harness.client.submit_result(header, iter(chunks), timeout_s=TIMEOUT_S)


def submit_valid(harness: Harness, volunteer: Volunteer, task_id: str, seed: int = 0) -> str:
    """Submit an honest result; returns its SHA-256."""
    payload = make_payload(harness.shapes, seed=seed)
    reply = submit(harness, make_header(volunteer, task_id, payload), payload)
    assert reply.accepted, reply.message
    return sha256_hex(payload)


def submit_evaluation(harness: Harness, volunteer: Volunteer, task_id: str) -> None:
    """Submit an honest evaluate result: metrics only."""
    metrics = m.TaskMetrics(eval_loss=2.5, examples=8, compute_s=0.1)
    reply = submit(harness, make_header(volunteer, task_id, b"", metrics=metrics), b"")
    assert reply.accepted, reply.message


def fetch(harness: Harness, session: m.Session, sha256: str, offset: int = 0) -> list[m.BlobChunk]:
    request = m.FetchBlobRequest(session=session, sha256=sha256, offset=offset)
    return list(harness.client.fetch_blob(request, timeout_s=TIMEOUT_S))


def raw_stub(target: str) -> tuple[grpc.Channel, pb_grpc.WorkerServiceStub]:
    """A stub without swarm's message limits, to send what the typed client never would."""
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    return channel, pb_grpc.WorkerServiceStub(channel)


def header_message(header: m.ResultHeader) -> Any:
    return pb.SubmitResultChunk(header=m.to_proto(header, pb.ResultHeader))


def snapshot(live: LiveCoordinator, job_id: str) -> dict[str, Any]:
    """The job's tasks, leases and rounds as plain tuples, for before/after comparison."""
    with live.services.db.transaction() as session:
        tasks = session.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.id))
        leases = session.scalars(
            select(Lease).join(Task, Task.id == Lease.task_id).where(Task.job_id == job_id)
        )
        rounds = session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.index))
        job = session.get_one(Job, job_id)
        return {
            "job": (job.status, job.rounds_completed, job.tasks_created),
            "tasks": [
                (t.id, t.status, t.worker_id, t.result_sha256, t.attempts, t.lease_deadline)
                for t in tasks
            ],
            "leases": sorted(
                (lease.id, lease.task_id, lease.worker_id, lease.outcome, lease.deadline)
                for lease in leases
            ),
            "rounds": [(r.index, r.status, r.num_tasks) for r in rounds],
        }


def task_row(live: LiveCoordinator, task_id: str) -> tuple[str, str | None, str | None]:
    with live.services.db.transaction() as session:
        task = session.get_one(Task, task_id)
        return task.status, task.worker_id, task.result_sha256


def active_lease_holders(live: LiveCoordinator, task_id: str) -> list[str]:
    with live.services.db.transaction() as session:
        return list(
            session.scalars(
                select(Lease.worker_id).where(Lease.task_id == task_id, Lease.outcome == "active")
            )
        )


def round_status(live: LiveCoordinator, job_id: str, index: int) -> str:
    with live.services.db.transaction() as session:
        return session.scalars(
            select(Round.status).where(Round.job_id == job_id, Round.index == index)
        ).one()


def accepted_in_round(live: LiveCoordinator, job_id: str, index: int) -> int:
    with live.services.db.transaction() as session:
        return session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.job_id == job_id, Task.round_index == index, Task.status == "accepted")
        )


def count_workers(live: LiveCoordinator) -> int:
    with live.services.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(Worker)) or 0


def stored_blobs(live: LiveCoordinator) -> set[str]:
    root = live.services.blobs.root
    return {p.name for p in root.rglob("*") if p.is_file() and "incoming" not in p.parts}


def incoming_files(live: LiveCoordinator) -> list[str]:
    return os.listdir(live.services.blobs.root / "incoming")


def wait_for_round(live: LiveCoordinator, job_id: str, index: int, status: str) -> None:
    wait_until(
        lambda: round_status(live, job_id, index) == status,
        f"round {index} of job {job_id} never became {status}",
        timeout_s=20.0,
    )


def wait_until(predicate: Callable[[], bool], failure: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def assert_serving(
    harness: Harness, volunteer: Volunteer | None = None, *, allow_internal_errors: bool = False
) -> None:
    """The coordinator still answers well-formed calls, and bad input never became INTERNAL."""
    fresh = register(harness.client, name="after")
    reply = harness.client.heartbeat(m.HeartbeatRequest(session=fresh.session))
    assert reply.heartbeat_interval_s > 0
    if volunteer is not None:
        harness.client.heartbeat(m.HeartbeatRequest(session=volunteer.session))
    if not allow_internal_errors:
        counters = harness.live.services.servicer.counters()
        assert {k: v for k, v in counters.items() if k.startswith("internal_errors")} == {}


def expect_error(code: str, call: Any, *args: Any, **kwargs: Any) -> str:
    """Run a typed-client call that must fail with `code`; return the error message."""
    with pytest.raises(SwarmError) as info:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)
    assert info.value.grpc_code == code, f"{info.value.grpc_code}: {info.value}"
    return str(info.value)


def expect_raw_error(code: grpc.StatusCode, call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    error: Any = info.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    return str(error.details())


@pytest.fixture
def harness(live_coordinator: LiveCoordinator) -> Iterator[Harness]:
    """A live coordinator with one running job (round 0 open, two train tasks) and a client."""
    services = live_coordinator.services
    job = wait_until_running(services, services.jobs.create_job(SPEC).id)
    channel = open_channel(live_coordinator.target)
    try:
        yield Harness(live=live_coordinator, job=job, channel=channel, client=WorkerClient(channel))
    finally:
        channel.close()


# -- 1. registration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "advice"),
    [(99, "ask its operator to upgrade"), (0, "upgrade swarmclient")],
)
def test_register_with_unsupported_protocol_version_is_failed_precondition(
    live_coordinator: LiveCoordinator, version: int, advice: str
) -> None:
    with open_channel(live_coordinator.target) as channel:
        client = WorkerClient(channel)
        request = signed_registration(protocol_version=version)
        with pytest.raises(VersionMismatchError) as info:
            client.register_worker(request)
        assert info.value.grpc_code == "FAILED_PRECONDITION"
        message = str(info.value)
        assert f"protocol version {version} is not supported" in message
        assert f"supports version(s) {PROTOCOL_VERSION}" in message
        assert advice in message
        assert count_workers(live_coordinator) == 0

        register(client)
        assert count_workers(live_coordinator) == 1


@pytest.mark.parametrize("key_len", [0, 31, 33, 44])
def test_register_with_wrong_public_key_length_is_invalid_argument(
    live_coordinator: LiveCoordinator, key_len: int
) -> None:
    with open_channel(live_coordinator.target) as channel:
        client = WorkerClient(channel)
        message = expect_error(
            "INVALID_ARGUMENT",
            client.register_worker,
            signed_registration(public_key=os.urandom(key_len)),
        )
        assert "32-byte Ed25519" in message
        assert f"got {key_len} bytes" in message
        assert count_workers(live_coordinator) == 0

        register(client)
        assert count_workers(live_coordinator) == 1


def test_a_registration_not_signed_by_its_key_is_refused(
    live_coordinator: LiveCoordinator,
) -> None:
    victim, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with open_channel(live_coordinator.target) as channel:
        client = WorkerClient(channel)
        honest = client.register_worker(signed_registration(victim, name="victim"))
        # The impostor claims the victim's public key (and so its id and credits).
        forged = signed_registration(impostor, public_key=public_bytes(victim), name="victim")
        message = expect_error("DATA_LOSS", client.register_worker, forged)
        assert "signature does not verify" in message
        unsigned = dataclasses.replace(forged, signature=b"")
        expect_error("DATA_LOSS", client.register_worker, unsigned)
        assert count_workers(live_coordinator) == 1
        # The victim's session still works.
        client.heartbeat(m.HeartbeatRequest(session=honest.session))


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
def test_a_registration_signed_far_from_now_is_refused_with_the_clock_to_fix(
    live_coordinator: LiveCoordinator, skew_s: float
) -> None:
    with open_channel(live_coordinator.target) as channel:
        client = WorkerClient(channel)
        request = signed_registration(signed_at=time.time() + skew_s)
        message = expect_error("INVALID_ARGUMENT", client.register_worker, request)
        assert "clock" in message and "NTP" in message
        assert count_workers(live_coordinator) == 0


def test_registering_again_with_the_same_key_keeps_the_worker(
    live_coordinator: LiveCoordinator,
) -> None:
    key = Ed25519PrivateKey.generate()
    with open_channel(live_coordinator.target) as channel:
        client = WorkerClient(channel)
        first = client.register_worker(signed_registration(key, name="laptop"))
        again = client.register_worker(signed_registration(key, name="laptop-renamed"))
        assert again.session.worker_id == first.session.worker_id
        assert again.session.token != first.session.token
        assert count_workers(live_coordinator) == 1
        # Only the newest session is valid: a restarted client's old process is shut out.
        expect_error("UNAUTHENTICATED", client.heartbeat, m.HeartbeatRequest(session=first.session))
        client.heartbeat(m.HeartbeatRequest(session=again.session))
        with live_coordinator.services.db.transaction() as session:
            assert session.get_one(Worker, first.session.worker_id).name == "laptop-renamed"


# -- 2. sessions ---------------------------------------------------------------------------


def test_calls_with_bogus_session_are_unauthenticated(harness: Harness) -> None:
    client, live = harness.client, harness.live
    honest = register(client)
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)
    payload = make_payload(harness.shapes)
    some_task = before["tasks"][0][0]
    bogus_sessions = [
        m.Session(worker_id=honest.session.worker_id, token=os.urandom(32)),  # wrong token
        m.Session(worker_id=honest.session.worker_id, token=b""),  # no token
        m.Session(worker_id="wk-0000000000000000", token=honest.session.token),  # unknown id
        m.Session(worker_id="", token=b""),
    ]
    for session in bogus_sessions:
        impostor = Volunteer(key=honest.key, session=session)
        calls = [
            (client.lease_task, m.LeaseTaskRequest(session=session)),
            (client.heartbeat, m.HeartbeatRequest(session=session, task_ids=[some_task])),
            (
                client.report_failure,
                m.ReportFailureRequest(
                    session=session, task_id=some_task, kind=m.FailureKind.ERROR
                ),
            ),
        ]
        for call, request in calls:
            message = expect_error("UNAUTHENTICATED", call, request)
            assert "register again" in message
        message = expect_error(
            "UNAUTHENTICATED",
            fetch,
            harness,
            session,
            harness.job.model_config_sha256,
        )
        assert "register again" in message
        message = expect_error(
            "UNAUTHENTICATED",
            submit,
            harness,
            make_header(impostor, some_task, payload),
            payload,
        )
        assert "register again" in message

    assert snapshot(live, harness.job.id) == before
    assert stored_blobs(live) == blobs_before
    # The honest session was not disturbed by the impostors.
    lease(client, honest)
    assert_serving(harness, honest)


def test_a_lease_request_naming_cached_blobs_that_are_not_digests_is_refused(
    harness: Harness,
) -> None:
    volunteer = register(harness.client)
    request = m.LeaseTaskRequest(session=volunteer.session, cached_sha256s=["../../etc/passwd"])
    message = expect_error("INVALID_ARGUMENT", harness.client.lease_task, request)
    assert "is not a SHA-256 digest" in message
    with harness.live.services.db.transaction() as session:
        assert session.get_one(Worker, volunteer.session.worker_id).cached_sha256s is None
    lease(harness.client, volunteer)  # the coordinator still serves this worker


# -- 3. unknown tasks ----------------------------------------------------------------------


def test_unknown_task_id_is_not_found(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    unknown = "task-doesnotexist-0-0"
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)
    payload = make_payload(harness.shapes)

    message = expect_error(
        "NOT_FOUND", submit, harness, make_header(worker, unknown, payload), payload
    )
    assert unknown in message
    message = expect_error(
        "NOT_FOUND",
        client.report_failure,
        m.ReportFailureRequest(
            session=worker.session, task_id=unknown, kind=m.FailureKind.HANDBACK
        ),
    )
    assert unknown in message
    reply = client.heartbeat(
        m.HeartbeatRequest(session=worker.session, task_ids=[unknown, task.task_id])
    )
    assert reply.revoked_task_ids == [unknown]
    assert reply.extended_task_ids == [task.task_id]

    after = snapshot(live, harness.job.id)
    # Only the heartbeat for the real task moved its deadline forward.
    strip = [row[:-1] for row in before["tasks"]], [row[:-1] for row in before["leases"]]
    assert ([row[:-1] for row in after["tasks"]], [row[:-1] for row in after["leases"]]) == strip
    assert after["rounds"] == before["rounds"]
    assert stored_blobs(live) == blobs_before
    assert lease(client, worker).task_id == task.task_id
    assert_serving(harness, worker)


# -- 4. someone else's task ----------------------------------------------------------------


def test_acting_on_another_workers_task_is_permission_denied(harness: Harness) -> None:
    client, live = harness.client, harness.live
    owner, intruder = register(client, "owner"), register(client, "intruder")
    task = lease(client, owner)
    before = snapshot(live, harness.job.id)
    payload = make_payload(harness.shapes)

    message = expect_error(
        "PERMISSION_DENIED",
        submit,
        harness,
        make_header(intruder, task.task_id, payload),
        payload,
    )
    assert task.task_id in message
    message = expect_error(
        "PERMISSION_DENIED",
        client.report_failure,
        m.ReportFailureRequest(
            session=intruder.session, task_id=task.task_id, kind=m.FailureKind.HANDBACK
        ),
    )
    assert task.task_id in message
    reply = client.heartbeat(m.HeartbeatRequest(session=intruder.session, task_ids=[task.task_id]))
    assert reply.revoked_task_ids == [task.task_id]

    # The owner's lease, its deadline included, is untouched; the owner can still finish.
    assert snapshot(live, harness.job.id) == before
    assert active_lease_holders(live, task.task_id) == [owner.session.worker_id]
    assert lease(client, owner).task_id == task.task_id
    submit_valid(harness, owner, task.task_id)
    assert task_row(live, task.task_id)[:2] == ("accepted", owner.session.worker_id)
    assert_serving(harness, owner)


# -- 5. and 6. integrity -------------------------------------------------------------------


def _integrity_cases(
    harness: Harness, worker: Volunteer, task_id: str
) -> list[tuple[str, m.ResultHeader, bytes, str]]:
    payload = make_payload(harness.shapes)
    flipped = bytes([payload[0] ^ 0xFF]) + payload[1:]
    stranger = Volunteer(key=Ed25519PrivateKey.generate(), session=worker.session)
    other_metrics = dataclasses.replace(METRICS, loss_last=0.01)
    honest_signature = make_header(worker, task_id, payload).signature
    return [
        (
            "bytes differ from the announced sha256",
            make_header(worker, task_id, flipped, sha256=sha256_hex(payload)),
            flipped,
            f"header announced {sha256_hex(payload)}",
        ),
        (
            "fewer bytes than announced",
            make_header(worker, task_id, payload, size=len(payload) + 1),
            payload,
            f"received {len(payload)} bytes, but the header announced {len(payload) + 1}",
        ),
        (
            "more bytes than announced",
            make_header(worker, task_id, payload, size=len(payload) - 1),
            payload,
            f"received {len(payload)} bytes, but the header announced {len(payload) - 1}",
        ),
        (
            "signed by another key",
            make_header(stranger, task_id, payload),
            payload,
            "signature does not verify",
        ),
        (
            "empty signature",
            make_header(worker, task_id, payload, signature=b""),
            payload,
            "signature does not verify",
        ),
        (
            "metrics changed after signing",
            make_header(
                worker, task_id, payload, metrics=other_metrics, signature=honest_signature
            ),
            payload,
            "signature does not verify",
        ),
    ]


def test_payload_or_signature_mismatch_is_data_loss_and_stores_nothing(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)

    for case, header, data, expected in _integrity_cases(harness, worker, task.task_id):
        message = expect_error("DATA_LOSS", submit, harness, header, data)
        assert expected in message, case
        assert not live.services.blobs.exists(header.payload_sha256), case
        assert stored_blobs(live) == blobs_before, case
        assert incoming_files(live) == [], case

    assert snapshot(live, harness.job.id) == before
    assert round_status(live, harness.job.id, 0) == "open"
    submit_valid(harness, worker, task.task_id)
    assert_serving(harness, worker)


# -- 7. size limits ------------------------------------------------------------------------


def test_announced_size_above_task_limit_is_resource_exhausted(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    limit = task.max_result_bytes
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)

    oversize = os.urandom(limit + 1)
    message = expect_error(
        "RESOURCE_EXHAUSTED", submit, harness, make_header(worker, task.task_id, oversize), oversize
    )
    assert f"result of {limit + 1} bytes exceeds this task's limit of {limit}" in message

    # Announcing a small size does not let more than the limit through either.
    small = make_payload(harness.shapes)
    message = expect_error(
        "RESOURCE_EXHAUSTED",
        submit,
        harness,
        make_header(worker, task.task_id, small),
        small + os.urandom(limit),
    )
    assert f"exceeds its limit of {limit} bytes" in message

    assert snapshot(live, harness.job.id) == before
    assert stored_blobs(live) == blobs_before
    assert incoming_files(live) == []
    submit_valid(harness, worker, task.task_id)
    assert_serving(harness, worker)


def _send_oversize_message(harness: Harness, worker: Volunteer, task_id: str) -> str:
    """A SubmitResult whose second gRPC message carries a 5 MiB data chunk; returns the error."""
    payload = make_payload(harness.shapes)
    stream = iter(
        [
            header_message(make_header(worker, task_id, payload)),
            pb.SubmitResultChunk(data=os.urandom(5 << 20)),
        ]
    )
    channel, stub = raw_stub(harness.live.target)
    with channel:
        return expect_raw_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED, stub.SubmitResult, stream, timeout=TIMEOUT_S
        )


def test_grpc_message_above_4_mib_is_resource_exhausted(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)

    message = _send_oversize_message(harness, worker, task.task_id)
    assert f"larger than max ({(5 << 20) + 5} vs. {MAX_MESSAGE_BYTES})" in message

    # gRPC answers the client itself; the handler's temporary file goes a moment later.
    wait_until(lambda: incoming_files(live) == [], "the partial upload was never removed")
    assert snapshot(live, harness.job.id) == before
    assert stored_blobs(live) == blobs_before
    submit_valid(harness, worker, task.task_id)
    assert_serving(harness, worker, allow_internal_errors=True)


def test_aborted_upload_is_not_counted_as_internal_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    worker = register(harness.client)
    task = lease(harness.client, worker)
    _send_oversize_message(harness, worker, task.task_id)
    wait_until(lambda: incoming_files(harness.live) == [], "the partial upload was never removed")
    time.sleep(0.5)  # the handler thread reports after gRPC has already answered the client

    counters = harness.live.services.servicer.counters()
    assert "internal_errors:SubmitResult" not in counters
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


# -- 8. corrupt payloads with honest hashes and signatures ----------------------------------


def _with_nan_first_element(payload: bytes) -> bytes:
    """The payload with its first fp16 value set to NaN and the record's CRC made to match."""
    (header_len,) = struct.unpack_from("<I", payload, 5)
    start = 9 + header_len
    (record_len,) = struct.unpack_from("<I", payload, start)
    record = json.loads(payload[start + 4 : start + 4 + record_len])
    body_start = start + 4 + record_len
    body = b"\x00\x7e" + payload[body_start + 2 : body_start + record["size"]]
    record["crc32"] = zlib.crc32(body)
    encoded = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    rest = payload[body_start + record["size"] :]
    return payload[:start] + struct.pack("<I", len(encoded)) + encoded + body + rest


def _corrupt_payloads(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, bytes, str]]:
    names = sorted(shapes)
    first = names[0]
    transposed = dict(shapes)
    transposed[first] = tuple(reversed(shapes[first]))
    missing = {name: shape for name, shape in shapes.items() if name != names[-1]}
    honest = make_payload(shapes)
    return [
        ("random bytes", os.urandom(4096), "bad magic"),
        ("empty", b"", "truncated"),
        ("wrong shape", make_payload(transposed), f"tensor {first}: shape"),
        ("missing tensor", make_payload(missing), f"the job has {len(names)}"),
        ("NaN", _with_nan_first_element(honest), f"{first}..{names[-1]}: contains NaN"),
        (
            "body does not match its checksum",
            honest[:-1] + bytes([honest[-1] ^ 0x01]),
            "checksum mismatch",
        ),
    ]


def test_corrupt_payload_is_invalid_argument_and_task_stays_leased(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)

    for case, payload, expected in _corrupt_payloads(harness.shapes):
        header = make_header(worker, task.task_id, payload)
        message = expect_error("INVALID_ARGUMENT", submit, harness, header, payload)
        assert expected in message, case
        assert not live.services.blobs.exists(header.payload_sha256), case
        client.heartbeat(m.HeartbeatRequest(session=worker.session, task_ids=[task.task_id]))

    after = snapshot(live, harness.job.id)
    assert after["rounds"] == before["rounds"] == [(0, "open", 3)]
    assert [row[:5] for row in after["tasks"]] == [row[:5] for row in before["tasks"]]
    assert task_row(live, task.task_id) == ("leased", worker.session.worker_id, None)
    assert active_lease_holders(live, task.task_id) == [worker.session.worker_id]
    assert stored_blobs(live) == blobs_before
    assert incoming_files(live) == []

    sha = submit_valid(harness, worker, task.task_id)
    assert task_row(live, task.task_id) == ("accepted", worker.session.worker_id, sha)
    assert_serving(harness, worker)


def test_deeply_nested_payload_header_is_invalid_argument(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    blobs_before = stored_blobs(live)
    nested = b"[" * 20_000
    payload = struct.pack("<4sBI", b"SWPL", FORMAT_VERSION, len(nested)) + nested
    assert len(payload) <= task.max_result_bytes
    header = make_header(worker, task.task_id, payload)

    message = expect_error("INVALID_ARGUMENT", submit, harness, header, payload)
    assert "header" in message
    assert stored_blobs(live) == blobs_before
    assert task_row(live, task.task_id) == ("leased", worker.session.worker_id, None)
    assert_serving(harness, worker)


def test_rejected_result_does_not_delete_a_job_blob(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    assert task.train is not None
    for sha in (task.train.model_config_sha256, task.train.tokens_sha256):
        blob = b"".join(chunk.data for chunk in fetch(harness, worker.session, sha))
        assert sha256_hex(blob) == sha
        assert len(blob) <= task.max_result_bytes

        message = expect_error(
            "INVALID_ARGUMENT", submit, harness, make_header(worker, task.task_id, blob), blob
        )
        assert "bad magic" in message
        # Other workers still need this blob to train.
        assert live.services.blobs.exists(sha), f"blob {sha} was deleted"
        assert b"".join(c.data for c in fetch(harness, worker.session, sha)) == blob


# -- 9. malformed SubmitResult streams -------------------------------------------------------


def test_submit_stream_without_single_leading_header_is_invalid_argument(
    harness: Harness,
) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    before = snapshot(live, harness.job.id)
    blobs_before = stored_blobs(live)
    payload = make_payload(harness.shapes)
    header = header_message(make_header(worker, task.task_id, payload))
    data = pb.SubmitResultChunk(data=payload)
    half = len(payload) // 2
    streams = {
        "data first": ([data, header], "must start with a header"),
        "empty stream": ([], "must start with a header"),
        "two headers": ([header, header, data], "exactly one header"),
        "header after data": (
            [
                header,
                pb.SubmitResultChunk(data=payload[:half]),
                header,
                pb.SubmitResultChunk(data=payload[half:]),
            ],
            "exactly one header",
        ),
    }

    channel, stub = raw_stub(live.target)
    with channel:
        for case, (messages, expected) in streams.items():
            message = expect_raw_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                stub.SubmitResult,
                iter(messages),
                timeout=TIMEOUT_S,
            )
            assert expected in message, case

    assert snapshot(live, harness.job.id) == before
    assert stored_blobs(live) == blobs_before
    assert incoming_files(live) == []
    submit_valid(harness, worker, task.task_id)
    assert_serving(harness, worker)


# -- 10. FetchBlob --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "../" * 21 + "x",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "",
        "g" * 64,
        "ab/cd/" + "a" * 58,
    ],
)
def test_fetch_blob_with_malformed_name_is_invalid_argument(harness: Harness, name: str) -> None:
    worker = register(harness.client)
    message = expect_error("INVALID_ARGUMENT", fetch, harness, worker.session, name)
    assert repr(name) in message
    assert "64 lowercase hex digits" in message
    assert_serving(harness, worker)


def test_fetch_blob_unknown_sha_offsets_and_tail(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    unknown = sha256_hex(b"no such blob")
    message = expect_error("NOT_FOUND", fetch, harness, worker.session, unknown)
    assert unknown in message

    data = os.urandom(2 * CHUNK_BYTES + 12_345)
    sha = live.services.blobs.put_bytes(data)
    for offset in (len(data) + 1, 1 << 62):
        message = expect_error("INVALID_ARGUMENT", fetch, harness, worker.session, sha, offset)
        assert f"offset {offset} is outside blob {sha} of {len(data)} bytes" in message

    for offset in (0, 1, CHUNK_BYTES - 1, CHUNK_BYTES + 7, len(data) - 1):
        chunks = fetch(harness, worker.session, sha, offset)
        assert b"".join(c.data for c in chunks) == data[offset:], offset
        assert chunks[0].offset == offset
        assert all(c.total_size == len(data) for c in chunks)
        assert all(len(c.data) <= CHUNK_BYTES for c in chunks)
        assert [c.offset for c in chunks[1:]] == [c.offset + len(c.data) for c in chunks[:-1]], (
            "chunks are contiguous"
        )
    assert b"".join(c.data for c in fetch(harness, worker.session, sha, len(data))) == b""
    assert_serving(harness, worker)


# -- 11. duplicate and late results ---------------------------------------------------------


def test_duplicate_result_is_acknowledged_and_ignored(harness: Harness) -> None:
    client, live = harness.client, harness.live
    first, second = register(client, "first"), register(client, "second")
    task = lease(client, first)
    lease(client, second)  # keeps the round open: its task has no result
    sha = submit_valid(harness, first, task.task_id, seed=1)
    assert accepted_in_round(live, harness.job.id, 0) == 1
    before = snapshot(live, harness.job.id)

    for seed in (1, 2):  # the same bytes again, then a different honest result
        payload = make_payload(harness.shapes, seed=seed)
        reply = submit(harness, make_header(first, task.task_id, payload), payload)
        assert reply.accepted is False
        assert task.task_id in reply.message
        assert "already has an accepted result" in reply.message

    after = snapshot(live, harness.job.id)
    assert after["tasks"] == before["tasks"]
    assert [row[:4] for row in after["leases"]] == [row[:4] for row in before["leases"]]
    assert after["rounds"] == before["rounds"] == [(0, "open", 3)]
    assert accepted_in_round(live, harness.job.id, 0) == 1
    assert task_row(live, task.task_id) == ("accepted", first.session.worker_id, sha)
    assert_serving(harness, first)


def test_ignored_result_is_not_kept_in_the_blob_store(harness: Harness) -> None:
    client, live = harness.client, harness.live
    worker = register(client)
    task = lease(client, worker)
    submit_valid(harness, worker, task.task_id, seed=1)
    blobs_before = stored_blobs(live)

    payload = make_payload(harness.shapes, seed=2)
    reply = submit(harness, make_header(worker, task.task_id, payload), payload)
    assert reply.accepted is False
    assert stored_blobs(live) == blobs_before


def test_late_result_after_round_closed_is_acknowledged_and_ignored(harness: Harness) -> None:
    client, live = harness.client, harness.live
    job_id = harness.job.id
    slow, fast = register(client, "slow"), register(client, "fast")

    t0 = lease(client, slow)
    client.report_failure(
        m.ReportFailureRequest(
            session=slow.session, task_id=t0.task_id, kind=m.FailureKind.HANDBACK, message="bye"
        )
    )
    assert lease(client, fast).task_id == t0.task_id  # handed back: leased again at once
    t1 = lease(client, slow)
    assert t1.task_id != t0.task_id
    fast_sha = submit_valid(harness, fast, t0.task_id, seed=1)
    submit_valid(harness, slow, t1.task_id, seed=2)
    evaluation = lease(client, fast)
    assert evaluation.evaluate is not None
    submit_evaluation(harness, fast, evaluation.task_id)
    wait_for_round(live, job_id, 0, "closed")
    before = snapshot(live, job_id)

    payload = make_payload(harness.shapes, seed=3)
    reply = submit(harness, make_header(slow, t0.task_id, payload), payload)
    assert reply.accepted is False
    assert t0.task_id in reply.message

    after = snapshot(live, job_id)
    assert after["tasks"] == before["tasks"]
    assert after["rounds"] == before["rounds"]
    assert after["rounds"][0][:2] == (0, "closed")
    assert after["rounds"][1][:2] == (1, "open")
    assert after["job"] == before["job"]
    assert after["job"][:2] == ("running", 1)
    assert accepted_in_round(live, job_id, 0) == 3  # two train tasks and the evaluation
    assert task_row(live, t0.task_id) == ("accepted", fast.session.worker_id, fast_sha)
    # The late worker can go on with round 1.
    assert lease(client, slow).round == 1
    assert_serving(harness, slow)


def test_heartbeats_report_the_workers_credits(harness: Harness) -> None:
    client = harness.client
    worker = register(client)
    task = lease(client, worker)
    before = client.heartbeat(m.HeartbeatRequest(session=worker.session, task_ids=[task.task_id]))
    assert (before.credits_granted_micro, before.credits_pending_micro) == (0, 0)
    submit_valid(harness, worker, task.task_id)
    after = client.heartbeat(m.HeartbeatRequest(session=worker.session))
    # Accepted: pending until the round that uses it closes.
    assert after.credits_pending_micro > 0 and after.credits_granted_micro == 0


def test_an_account_token_sends_the_workers_credits_to_that_account(harness: Harness) -> None:
    harness.live.services.keys.create("admin", "operator")
    _, secret = harness.live.services.keys.create("alice", "researcher")
    key = Ed25519PrivateKey.generate()
    reply = harness.client.register_worker(signed_registration(key, account_token=secret))
    worker = Volunteer(key=key, session=reply.session)
    task = lease(harness.client, worker)
    submit_valid(harness, worker, task.task_id)
    beat = harness.client.heartbeat(m.HeartbeatRequest(session=worker.session))
    assert beat.credits_pending_micro > 0
    with harness.live.services.db.transaction() as session:
        statement = harness.live.services.ledger.statement(session, "user:alice")
        own = harness.live.services.ledger.statement(session, f"worker:{worker.session.worker_id}")
    assert statement["pending"] == beat.credits_pending_micro
    assert own["pending"] == 0


def test_a_wrong_account_token_is_refused_with_what_to_do(harness: Harness) -> None:
    request = signed_registration(account_token="sk-swarm-not-a-key")
    message = expect_error("UNAUTHENTICATED", harness.client.register_worker, request)
    assert "swarmclient login --token" in message
    assert_serving(harness, register(harness.client))


@pytest.mark.parametrize(
    "hardware",
    [
        m.HardwareProfile(flops_per_s=-1.0),
        m.HardwareProfile(download_bytes_per_s=-5.0),
    ],
)
def test_a_hardware_profile_with_negative_numbers_is_refused(
    harness: Harness, hardware: m.HardwareProfile
) -> None:
    message = expect_error(
        "INVALID_ARGUMENT", harness.client.register_worker, signed_registration(hardware=hardware)
    )
    assert "negative" in message
    assert_serving(harness)


def test_a_registration_names_the_probe_a_worker_measures_its_link_with(harness: Harness) -> None:
    reply = harness.client.register_worker(signed_registration())
    probe = fetch(harness, reply.session, reply.probe_sha256)
    assert sum(len(c.data) for c in probe) == 1 << 20
    # A worker that measured its link says so when it registers; the coordinator starts from it.
    measured = m.HardwareProfile(memory_bytes=1 << 30, download_bytes_per_s=2.5e6)
    other = harness.client.register_worker(signed_registration(hardware=measured))
    with harness.live.services.db.transaction() as session:
        worker = session.get_one(Worker, other.session.worker_id)
        assert worker.download_bytes_per_s == 2.5e6
