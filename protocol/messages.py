"""Plain dataclasses for every swarm.v1 message, and their conversion to and from protobuf.

The rest of the code base speaks these dataclasses; only this package touches generated
`*_pb2` code. Field names match the `.proto` exactly, which lets one pair of generic functions
convert in both directions.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message

from swarm.protocol.generated import worker_pb2 as pb

T = TypeVar("T")


class FailureKind(enum.IntEnum):
    UNSPECIFIED = 0
    HANDBACK = 1
    OUT_OF_MEMORY = 2
    ERROR = 3


@dataclass(frozen=True, kw_only=True)
class Session:
    worker_id: str
    token: bytes


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    device_type: str = "cpu"
    device_name: str = ""
    num_devices: int = 1
    memory_bytes: int = 0
    cpu_cores: int = 1
    flops_per_s: float = 0.0
    platform: str = ""
    download_bytes_per_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RegisterWorkerRequest:
    protocol_version: int
    name: str
    public_key: bytes
    hardware: HardwareProfile
    client_version: str = ""
    signed_at_unix_s: float = 0.0
    signature: bytes = b""
    account_token: str = field(default="", repr=False)


@dataclass(frozen=True, kw_only=True)
class RegisterWorkerResponse:
    session: Session
    heartbeat_interval_s: float
    max_chunk_bytes: int
    coordinator_version: str = ""
    probe_sha256: str = ""


@dataclass(frozen=True, kw_only=True)
class HeartbeatRequest:
    session: Session
    task_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class HeartbeatResponse:
    extended_task_ids: list[str] = field(default_factory=list)
    revoked_task_ids: list[str] = field(default_factory=list)
    heartbeat_interval_s: float = 0.0
    credits_granted_micro: int = 0
    credits_pending_micro: int = 0


@dataclass(frozen=True, kw_only=True)
class LeaseTaskRequest:
    session: Session
    cached_sha256s: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class CompressionPolicy:
    chain: str
    small_chain: str
    small_elements: int


@dataclass(frozen=True, kw_only=True)
class ParamDelta:
    version: int
    delta_sha256: str
    size_bytes: int
    params_sha256: str


@dataclass(frozen=True, kw_only=True)
class Adapter:
    kind: str = "full"
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    objective: str = "lm"
    dpo_beta: float = 0.0
    adapter: Adapter = field(default_factory=lambda: Adapter())


@dataclass(frozen=True, kw_only=True)
class PeerAveraging:
    group_size: int
    timeout_s: float
    group_key: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainTask:
    model_config_sha256: str
    params_sha256: str
    tokens_sha256: str
    inner_steps: int
    batch_size: int
    seq_len: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    warmup_steps: int
    seed: int
    update_policy: CompressionPolicy
    broadcast_policy: CompressionPolicy
    param_deltas: list[ParamDelta] = field(default_factory=list)
    base_sha256s: list[str] = field(default_factory=list)
    recipe: Recipe = field(default_factory=lambda: Recipe())
    sample_indices: list[int] = field(default_factory=list)
    keep_inner_state: bool = False
    peer_averaging: PeerAveraging | None = None


@dataclass(frozen=True, kw_only=True)
class EvaluateTask:
    model_config_sha256: str
    params_sha256: str
    data_sha256: str
    recipe: Recipe
    batch_size: int
    max_examples: int
    seq_len: int
    broadcast_policy: CompressionPolicy
    param_deltas: list[ParamDelta] = field(default_factory=list)
    base_sha256s: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Task:
    task_id: str
    job_id: str
    round: int
    version: int
    lease_deadline_unix_s: float
    max_result_bytes: int
    train: TrainTask | None = None
    evaluate: EvaluateTask | None = None


@dataclass(frozen=True, kw_only=True)
class LeaseTaskResponse:
    task: Task | None = None
    retry_after_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class FetchBlobRequest:
    session: Session
    sha256: str
    offset: int = 0


@dataclass(frozen=True, kw_only=True)
class BlobChunk:
    offset: int
    data: bytes
    total_size: int


@dataclass(frozen=True, kw_only=True)
class TaskMetrics:
    loss_first: float = 0.0
    loss_last: float = 0.0
    loss_mean: float = 0.0
    tokens: int = 0
    compute_s: float = 0.0
    steps: int = 0
    eval_loss: float = 0.0
    token_accuracy: float = 0.0
    reward_accuracy: float = 0.0
    reward_margin: float = 0.0
    examples: int = 0


@dataclass(frozen=True, kw_only=True)
class ResultHeader:
    session: Session
    task_id: str
    metrics: TaskMetrics
    payload_sha256: str
    payload_size: int
    signature: bytes = b""
    group_task_ids: list[str] = field(default_factory=list)
    group_payload_task_id: str = ""


@dataclass(frozen=True, kw_only=True)
class SubmitResultResponse:
    accepted: bool
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ReportFailureRequest:
    session: Session
    task_id: str
    kind: FailureKind
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ReportFailureResponse:
    pass


@dataclass(frozen=True, kw_only=True)
class FindPeersRequest:
    session: Session
    task_id: str
    addrs: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class FindPeersResponse:
    addrs: list[str] = field(default_factory=list)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass inside `X` or `X | None`, if any (not inside `list[X]`)."""
    if typing.get_origin(hint) is list:
        return None
    candidates = typing.get_args(hint) or (hint,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate):
            return candidate  # type: ignore[return-value]
    return None


def to_proto(obj: Any, message_cls: type[Message]) -> Message:
    """Convert a dataclass from this module into its protobuf message."""
    message = message_cls()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            nested_cls = type(getattr(message, f.name))
            getattr(message, f.name).CopyFrom(to_proto(value, nested_cls))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            repeated = getattr(message, f.name)
            for item in value:
                element = repeated.add()
                element.CopyFrom(to_proto(item, type(element)))
        elif isinstance(value, list):
            getattr(message, f.name).extend(value)
        else:
            setattr(message, f.name, int(value) if isinstance(value, enum.IntEnum) else value)
    return message


def from_proto(message: Message, cls: type[T]) -> T:
    """Convert a protobuf message into the dataclass `cls` of this module."""
    kwargs: dict[str, Any] = {}
    for name, hint in _hints(cls).items():
        nested = _dataclass_in(hint)
        if nested is not None:
            optional = type(None) in typing.get_args(hint)
            if optional and not message.HasField(name):
                kwargs[name] = None
            else:
                kwargs[name] = from_proto(getattr(message, name), nested)
        elif isinstance(hint, type) and issubclass(hint, enum.IntEnum):
            raw = getattr(message, name)
            kwargs[name] = hint(raw) if raw in hint._value2member_map_ else hint(0)
        elif typing.get_origin(hint) is list:
            (item_hint,) = typing.get_args(hint)
            item_cls = _dataclass_in(item_hint)
            items = getattr(message, name)
            kwargs[name] = [from_proto(i, item_cls) for i in items] if item_cls else list(items)
        else:
            kwargs[name] = getattr(message, name)
    return cls(**kwargs)


def registration_signing_bytes(public_key: bytes, name: str, signed_at_unix_s: float) -> bytes:
    """The exact bytes a worker signs when it registers, proving it holds its key."""
    return (
        b"swarm.v1/register\x00"
        + public_key
        + b"\x00"
        + name.encode()
        + b"\x00"
        + repr(float(signed_at_unix_s)).encode()
    )


def result_signing_bytes(
    task_id: str,
    payload_sha256: str,
    metrics: TaskMetrics,
    group_task_ids: Sequence[str] = (),
    group_payload_task_id: str = "",
) -> bytes:
    """The exact bytes a worker signs for a result, and the coordinator verifies.

    The peer-averaging fields are appended only when set, so a result without them signs the
    same bytes as before they existed."""
    metrics_bytes = to_proto(metrics, pb.TaskMetrics).SerializeToString(deterministic=True)
    signed = (
        b"swarm.v1/result\x00"
        + task_id.encode()
        + b"\x00"
        + payload_sha256.encode()
        + b"\x00"
        + metrics_bytes
    )
    if group_task_ids or group_payload_task_id:
        signed += (
            b"\x00group\x00"
            + ",".join(group_task_ids).encode()
            + b"\x00"
            + group_payload_task_id.encode()
        )
    return signed
