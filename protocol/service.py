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
from google.protobuf.message import DecodeError

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


class _Servicer:
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

    def RegisterWorker(self, request: bytes, context: grpc.ServicerContext) -> Any:
        def call() -> Any:
            req = _parse(request, pb.RegisterWorkerRequest, m.RegisterWorkerRequest)
            return m.to_proto(
                self._handler.register_worker(req, context.peer()), pb.RegisterWorkerResponse
            )

        return self._run("RegisterWorker", context, call)

    def Heartbeat(self, request: bytes, context: grpc.ServicerContext) -> Any:
        return self._run(
            "Heartbeat",
            context,
            lambda: m.to_proto(
                self._handler.heartbeat(_parse(request, pb.HeartbeatRequest, m.HeartbeatRequest)),
                pb.HeartbeatResponse,
            ),
        )

    def LeaseTask(self, request: bytes, context: grpc.ServicerContext) -> Any:
        return self._run(
            "LeaseTask",
            context,
            lambda: m.to_proto(
                self._handler.lease_task(_parse(request, pb.LeaseTaskRequest, m.LeaseTaskRequest)),
                pb.LeaseTaskResponse,
            ),
        )

    def FetchBlob(self, request: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
        chunks = self._run(
            "FetchBlob",
            context,
            lambda: self._handler.fetch_blob(
                _parse(request, pb.FetchBlobRequest, m.FetchBlobRequest)
            ),
        )
        while True:
            chunk = self._run("FetchBlob", context, lambda: next(chunks, None))
            if chunk is None:
                return
            yield pb.BlobChunk(offset=chunk.offset, data=chunk.data, total_size=chunk.total_size)

    def SubmitResult(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        def call() -> Any:
            raw = next(request_iterator, None)
            first = None if raw is None else _parse(raw, pb.SubmitResultChunk)
            if first is None or first.WhichOneof("part") != "header":
                raise ProtocolError("SubmitResult must start with a header message")
            header = m.from_proto(first.header, m.ResultHeader)

            def data_chunks() -> Iterator[bytes]:
                try:
                    for data in request_iterator:
                        chunk = _parse(data, pb.SubmitResultChunk)
                        if chunk.WhichOneof("part") != "data":
                            raise ProtocolError("SubmitResult carries exactly one header, first")
                        yield chunk.data
                except grpc.RpcError as exc:  # the client went away or gRPC cut the stream
                    raise TransportError(f"the upload ended early: {exc}") from None

            return m.to_proto(
                self._handler.submit_result(header, data_chunks()), pb.SubmitResultResponse
            )

        return self._run("SubmitResult", context, call)

    def ReportFailure(self, request: bytes, context: grpc.ServicerContext) -> Any:
        return self._run(
            "ReportFailure",
            context,
            lambda: m.to_proto(
                self._handler.report_failure(
                    _parse(request, pb.ReportFailureRequest, m.ReportFailureRequest)
                ),
                pb.ReportFailureResponse,
            ),
        )

    def FindPeers(self, request: bytes, context: grpc.ServicerContext) -> Any:
        return self._run(
            "FindPeers",
            context,
            lambda: m.to_proto(
                self._handler.find_peers(_parse(request, pb.FindPeersRequest, m.FindPeersRequest)),
                pb.FindPeersResponse,
            ),
        )


def _parse(raw: bytes, message_cls: Any, dataclass_cls: type[R] | None = None) -> Any:
    """Decode a request here rather than in gRPC, so that malformed bytes are the caller's
    INVALID_ARGUMENT, not the server's INTERNAL."""
    try:
        message = message_cls.FromString(raw)
    except DecodeError as exc:
        raise ProtocolError(f"malformed {message_cls.DESCRIPTOR.name}: {exc}") from None
    return message if dataclass_cls is None else m.from_proto(message, dataclass_cls)


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_worker_service(
    server: grpc.Server,
    handler: WorkerHandler,
    on_internal_error: Callable[[str], None] = lambda rpc: None,
) -> None:
    """Mount `handler` on a gRPC server as `swarm.v1.WorkerService`: every method the .proto
    declares, receiving raw bytes that `_Servicer` decodes itself."""
    servicer = _Servicer(handler, on_internal_error)
    service = pb.DESCRIPTOR.services_by_name["WorkerService"]
    handlers = {
        method.name: _HANDLER_KINDS[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=None,  # bytes, decoded by `_parse`
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


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
