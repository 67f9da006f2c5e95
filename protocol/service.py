"""gRPC plumbing for `swarm.v1.WorkerService`, in terms of the dataclasses of `messages`.

The coordinator implements `WorkerHandler` and mounts it with `add_worker_service`; the client
talks through `WorkerClient`. Both translate between `SwarmError` subclasses and gRPC status
codes, so neither side sees generated code or raw status codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from swarm.protocol import messages as m
from swarm.protocol.errors import ProtocolError, SwarmError, TransportError, error_for_code
from swarm.protocol.generated import worker_pb2 as pb
from swarm.protocol.generated import worker_pb2_grpc as pb_grpc
from swarm.protocol.limits import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

R = TypeVar("R")

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class WorkerHandler(Protocol):
    """What a coordinator implements to serve workers; raise `SwarmError`s for bad requests."""

    def register_worker(
        self, request: m.RegisterWorkerRequest, peer: str
    ) -> m.RegisterWorkerResponse: ...

    def heartbeat(self, request: m.HeartbeatRequest) -> m.HeartbeatResponse: ...

    def lease_task(self, request: m.LeaseTaskRequest) -> m.LeaseTaskResponse: ...

    def fetch_blob(self, request: m.FetchBlobRequest) -> Iterator[m.BlobChunk]: ...

    def submit_result(
        self, header: m.ResultHeader, chunks: Iterator[bytes]
    ) -> m.SubmitResultResponse: ...

    def report_failure(self, request: m.ReportFailureRequest) -> m.ReportFailureResponse: ...

    def find_peers(self, request: m.FindPeersRequest) -> m.FindPeersResponse: ...


class _Servicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, handler: WorkerHandler, on_internal_error: Callable[[str], None]) -> None:
        self._handler = handler
        self._on_internal_error = on_internal_error

    def _run(self, rpc: str, context: grpc.ServicerContext, call: Callable[[], R]) -> R:
        try:
            return call()
        except SwarmError as exc:
            logger.info("%s from %s refused: %s", rpc, context.peer(), exc)
            context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
        except Exception:  # the top of a handler: log, count, answer INTERNAL
            logger.exception("%s from %s failed", rpc, context.peer())
            self._on_internal_error(rpc)
            context.abort(
                grpc.StatusCode.INTERNAL,
                f"{rpc} failed inside the coordinator; it was logged, try again later",
            )
        raise AssertionError("unreachable: context.abort raises")

    def RegisterWorker(self, request: Any, context: grpc.ServicerContext) -> Any:
        def call() -> Any:
            req = m.from_proto(request, m.RegisterWorkerRequest)
            return m.to_proto(
                self._handler.register_worker(req, context.peer()), pb.RegisterWorkerResponse
            )

        return self._run("RegisterWorker", context, call)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run(
            "Heartbeat",
            context,
            lambda: m.to_proto(
                self._handler.heartbeat(m.from_proto(request, m.HeartbeatRequest)),
                pb.HeartbeatResponse,
            ),
        )

    def LeaseTask(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run(
            "LeaseTask",
            context,
            lambda: m.to_proto(
                self._handler.lease_task(m.from_proto(request, m.LeaseTaskRequest)),
                pb.LeaseTaskResponse,
            ),
        )

    def FetchBlob(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        req = m.from_proto(request, m.FetchBlobRequest)
        chunks = self._run("FetchBlob", context, lambda: self._handler.fetch_blob(req))
        while True:
            chunk = self._run("FetchBlob", context, lambda: next(chunks, None))
            if chunk is None:
                return
            yield pb.BlobChunk(offset=chunk.offset, data=chunk.data, total_size=chunk.total_size)

    def SubmitResult(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def call() -> Any:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise ProtocolError("SubmitResult must start with a header message")
            header = m.from_proto(first.header, m.ResultHeader)

            def data_chunks() -> Iterator[bytes]:
                try:
                    for chunk in request_iterator:
                        if chunk.WhichOneof("part") != "data":
                            raise ProtocolError("SubmitResult carries exactly one header, first")
                        yield chunk.data
                except grpc.RpcError as exc:  # the client went away or gRPC cut the stream
                    raise TransportError(f"the upload ended early: {exc}") from None

            return m.to_proto(
                self._handler.submit_result(header, data_chunks()), pb.SubmitResultResponse
            )

        return self._run("SubmitResult", context, call)

    def ReportFailure(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run(
            "ReportFailure",
            context,
            lambda: m.to_proto(
                self._handler.report_failure(m.from_proto(request, m.ReportFailureRequest)),
                pb.ReportFailureResponse,
            ),
        )

    def FindPeers(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._run(
            "FindPeers",
            context,
            lambda: m.to_proto(
                self._handler.find_peers(m.from_proto(request, m.FindPeersRequest)),
                pb.FindPeersResponse,
            ),
        )


def add_worker_service(
    server: grpc.Server,
    handler: WorkerHandler,
    on_internal_error: Callable[[str], None] = lambda rpc: None,
) -> None:
    """Mount `handler` on a gRPC server as `swarm.v1.WorkerService`."""
    pb_grpc.add_WorkerServiceServicer_to_server(_Servicer(handler, on_internal_error), server)


def _translate(exc: grpc.RpcError) -> SwarmError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    error = error_for_code(name, details or name)
    error.grpc_code = name
    return error


class WorkerClient:
    """Typed calls to a coordinator; every call has a deadline and raises `SwarmError`s.

    `TransportError` (UNAVAILABLE, DEADLINE_EXCEEDED) is the only retryable error.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.WorkerServiceStub(channel)

    def _unary(
        self, method: Any, request: Any, message_cls: type, response_cls: type[R], timeout_s: float
    ) -> R:
        try:
            reply = method(m.to_proto(request, message_cls), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        return m.from_proto(reply, response_cls)

    def register_worker(
        self, request: m.RegisterWorkerRequest, timeout_s: float = 10.0
    ) -> m.RegisterWorkerResponse:
        return self._unary(
            self._stub.RegisterWorker,
            request,
            pb.RegisterWorkerRequest,
            m.RegisterWorkerResponse,
            timeout_s,
        )

    def heartbeat(
        self, request: m.HeartbeatRequest, timeout_s: float = 10.0
    ) -> m.HeartbeatResponse:
        return self._unary(
            self._stub.Heartbeat, request, pb.HeartbeatRequest, m.HeartbeatResponse, timeout_s
        )

    def lease_task(
        self, request: m.LeaseTaskRequest, timeout_s: float = 10.0
    ) -> m.LeaseTaskResponse:
        return self._unary(
            self._stub.LeaseTask, request, pb.LeaseTaskRequest, m.LeaseTaskResponse, timeout_s
        )

    def report_failure(
        self, request: m.ReportFailureRequest, timeout_s: float = 10.0
    ) -> m.ReportFailureResponse:
        return self._unary(
            self._stub.ReportFailure,
            request,
            pb.ReportFailureRequest,
            m.ReportFailureResponse,
            timeout_s,
        )

    def find_peers(
        self, request: m.FindPeersRequest, timeout_s: float = 10.0
    ) -> m.FindPeersResponse:
        return self._unary(
            self._stub.FindPeers, request, pb.FindPeersRequest, m.FindPeersResponse, timeout_s
        )

    def fetch_blob(self, request: m.FetchBlobRequest, timeout_s: float) -> Iterator[m.BlobChunk]:
        """Stream a blob from `request.offset`; the whole stream must finish in `timeout_s`."""
        try:
            for chunk in self._stub.FetchBlob(
                m.to_proto(request, pb.FetchBlobRequest), timeout=timeout_s
            ):
                yield m.BlobChunk(offset=chunk.offset, data=chunk.data, total_size=chunk.total_size)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def submit_result(
        self, header: m.ResultHeader, chunks: Iterator[bytes], timeout_s: float
    ) -> m.SubmitResultResponse:
        def messages() -> Iterator[Any]:
            yield pb.SubmitResultChunk(header=m.to_proto(header, pb.ResultHeader))
            for data in chunks:
                yield pb.SubmitResultChunk(data=data)

        try:
            reply = self._stub.SubmitResult(messages(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        return m.from_proto(reply, m.SubmitResultResponse)


def open_channel(
    target: str,
    *,
    paced: bool = False,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `HOST:PORT` with swarm's message limits: TLS with `credentials`, plaintext
    without; `options` add to swarm's.

    `paced`: the caller reads streams at a capped rate. HTTP/2's bandwidth-delay probe would
    otherwise widen the flow-control window until a whole blob crosses the link at once, however
    slowly it is read; without the probe, the window stays small and the sender keeps to the
    reader's pace."""
    every = [*CHANNEL_OPTIONS, *options, *([("grpc.http2.bdp_probe", 0)] if paced else [])]
    if credentials is None:
        return grpc.insecure_channel(target, options=every)
    return grpc.secure_channel(target, credentials, options=every)


def new_server(max_workers: int, max_concurrent_rpcs: int | None = None) -> grpc.Server:
    """A threaded gRPC server with swarm's message limits. Beyond `max_concurrent_rpcs` calls
    in progress (running or queued for a thread), new calls are refused at once with
    RESOURCE_EXHAUSTED, which clients see as a retryable `OverloadedError`: under more load than
    it can serve, the server keeps answering the calls it took within their deadlines instead of
    queueing every call until all of them time out."""
    from concurrent import futures

    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=CHANNEL_OPTIONS,
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
