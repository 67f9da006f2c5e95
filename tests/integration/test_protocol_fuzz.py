"""Fuzzing the worker protocol: random and mutated bytes to every RPC of a live coordinator.

No call may end in INTERNAL or UNKNOWN (a crash or an unhandled error inside the coordinator),
and the coordinator must go on serving a well-formed worker afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.protocol import messages as m
from swarm.protocol.generated import worker_pb2 as pb
from swarm.protocol.service import WorkerClient, open_channel
from tests.conftest import LiveCoordinator, signed_registration

pytestmark = pytest.mark.integration

SERVICE = "/swarm.v1.WorkerService/"
UNARY = ("RegisterWorker", "Heartbeat", "LeaseTask", "ReportFailure", "FindPeers")
CRASHES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _valid_messages() -> dict[str, bytes]:
    """A well-formed request per RPC, for mutation."""
    session = pb.Session(worker_id="w-" + "0" * 12, token=b"\x01" * 32)
    return {
        "RegisterWorker": m.to_proto(
            signed_registration(), pb.RegisterWorkerRequest
        ).SerializeToString(),
        "Heartbeat": pb.HeartbeatRequest(session=session, task_ids=["task-x"]).SerializeToString(),
        "LeaseTask": pb.LeaseTaskRequest(
            session=session, cached_sha256s=["a" * 64]
        ).SerializeToString(),
        "ReportFailure": pb.ReportFailureRequest(session=session, task_id="t").SerializeToString(),
        "FindPeers": pb.FindPeersRequest(
            session=session, task_id="t", addrs=["/x"]
        ).SerializeToString(),
        "FetchBlob": pb.FetchBlobRequest(session=session, sha256="b" * 64).SerializeToString(),
        "SubmitResult": pb.SubmitResultChunk(
            header=pb.ResultHeader(session=session, task_id="t", payload_size=3)
        ).SerializeToString(),
    }


VALID = _valid_messages()


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    """`base` with a few bytes overwritten, inserted or cut off."""

    def apply(edits: list[tuple[int, int]], cut: int) -> bytes:
        data = bytearray(base)
        for position, value in edits:
            if data:
                data[position % len(data)] = value
        return bytes(data[: max(0, len(data) - cut)])

    return st.builds(
        apply,
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
        st.integers(0, 8),
    )


def fuzz_bytes(rpc: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutated(VALID[rpc]))


def _code(call: object) -> grpc.StatusCode:
    try:
        if isinstance(call, Iterator):
            for _ in call:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]


@pytest.fixture
def channel(live_coordinator: LiveCoordinator) -> Iterator[grpc.Channel]:
    with open_channel(live_coordinator.target) as opened:
        yield opened


@pytest.mark.parametrize("rpc", UNARY)
def test_unary_rpcs_survive_fuzzed_requests(channel: grpc.Channel, rpc: str) -> None:
    call = channel.unary_unary(SERVICE + rpc)

    @FUZZ
    @given(data=fuzz_bytes(rpc))
    def one(data: bytes) -> None:
        try:
            call(data, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() not in CRASHES, (rpc, data, exc.details())

    one()
    assert WorkerClient(channel).register_worker(signed_registration()).session.worker_id


def test_fetch_blob_survives_fuzzed_requests(channel: grpc.Channel) -> None:
    call = channel.unary_stream(SERVICE + "FetchBlob")

    @FUZZ
    @given(data=fuzz_bytes("FetchBlob"))
    def one(data: bytes) -> None:
        code = _code(call(data, timeout=10))
        assert code not in CRASHES, (data, code)

    one()


def test_submit_result_survives_fuzzed_streams(channel: grpc.Channel) -> None:
    call = channel.stream_unary(SERVICE + "SubmitResult")

    @FUZZ
    @given(
        first=fuzz_bytes("SubmitResult"),
        rest=st.lists(st.binary(max_size=256), max_size=4),
    )
    def one(first: bytes, rest: list[bytes]) -> None:
        try:
            call(iter([first, *rest]), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() not in CRASHES, (first, rest, exc.details())

    one()
    assert WorkerClient(channel).register_worker(signed_registration()).session.worker_id
