from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_KIND_UNSPECIFIED: _ClassVar[FailureKind]
    FAILURE_KIND_HANDBACK: _ClassVar[FailureKind]
    FAILURE_KIND_OUT_OF_MEMORY: _ClassVar[FailureKind]
    FAILURE_KIND_ERROR: _ClassVar[FailureKind]
FAILURE_KIND_UNSPECIFIED: FailureKind
FAILURE_KIND_HANDBACK: FailureKind
FAILURE_KIND_OUT_OF_MEMORY: FailureKind
FAILURE_KIND_ERROR: FailureKind

class Session(_message.Message):
    __slots__ = ("worker_id", "token")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    token: bytes
    def __init__(self, worker_id: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class HardwareProfile(_message.Message):
    __slots__ = ("device_type", "device_name", "num_devices", "memory_bytes", "cpu_cores", "flops_per_s", "platform", "download_bytes_per_s")
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_DEVICES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    device_type: str
    device_name: str
    num_devices: int
    memory_bytes: int
    cpu_cores: int
    flops_per_s: float
    platform: str
    download_bytes_per_s: float
    def __init__(self, device_type: _Optional[str] = ..., device_name: _Optional[str] = ..., num_devices: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., cpu_cores: _Optional[int] = ..., flops_per_s: _Optional[float] = ..., platform: _Optional[str] = ..., download_bytes_per_s: _Optional[float] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("protocol_version", "name", "public_key", "hardware", "client_version", "signed_at_unix_s", "signature", "account_token")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    name: str
    public_key: bytes
    hardware: HardwareProfile
    client_version: str
    signed_at_unix_s: float
    signature: bytes
    account_token: str
    def __init__(self, protocol_version: _Optional[int] = ..., name: _Optional[str] = ..., public_key: _Optional[bytes] = ..., hardware: _Optional[_Union[HardwareProfile, _Mapping]] = ..., client_version: _Optional[str] = ..., signed_at_unix_s: _Optional[float] = ..., signature: _Optional[bytes] = ..., account_token: _Optional[str] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("session", "heartbeat_interval_s", "max_chunk_bytes", "coordinator_version", "probe_sha256")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBE_SHA256_FIELD_NUMBER: _ClassVar[int]
    session: Session
    heartbeat_interval_s: float
    max_chunk_bytes: int
    coordinator_version: str
    probe_sha256: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., heartbeat_interval_s: _Optional[float] = ..., max_chunk_bytes: _Optional[int] = ..., coordinator_version: _Optional[str] = ..., probe_sha256: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session", "task_ids")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    session: Session
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("extended_task_ids", "revoked_task_ids", "heartbeat_interval_s", "credits_granted_micro", "credits_pending_micro")
    EXTENDED_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CREDITS_GRANTED_MICRO_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_MICRO_FIELD_NUMBER: _ClassVar[int]
    extended_task_ids: _containers.RepeatedScalarFieldContainer[str]
    revoked_task_ids: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_interval_s: float
    credits_granted_micro: int
    credits_pending_micro: int
    def __init__(self, extended_task_ids: _Optional[_Iterable[str]] = ..., revoked_task_ids: _Optional[_Iterable[str]] = ..., heartbeat_interval_s: _Optional[float] = ..., credits_granted_micro: _Optional[int] = ..., credits_pending_micro: _Optional[int] = ...) -> None: ...

class LeaseTaskRequest(_message.Message):
    __slots__ = ("session", "cached_sha256s")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_SHA256S_FIELD_NUMBER: _ClassVar[int]
    session: Session
    cached_sha256s: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., cached_sha256s: _Optional[_Iterable[str]] = ...) -> None: ...

class CompressionPolicy(_message.Message):
    __slots__ = ("chain", "small_chain", "small_elements")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    SMALL_CHAIN_FIELD_NUMBER: _ClassVar[int]
    SMALL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    chain: str
    small_chain: str
    small_elements: int
    def __init__(self, chain: _Optional[str] = ..., small_chain: _Optional[str] = ..., small_elements: _Optional[int] = ...) -> None: ...

class ParamDelta(_message.Message):
    __slots__ = ("version", "delta_sha256", "size_bytes", "params_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELTA_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    delta_sha256: str
    size_bytes: int
    params_sha256: str
    def __init__(self, version: _Optional[int] = ..., delta_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., params_sha256: _Optional[str] = ...) -> None: ...

class TrainTask(_message.Message):
    __slots__ = ("model_config_sha256", "params_sha256", "tokens_sha256", "inner_steps", "batch_size", "seq_len", "learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "seed", "update_policy", "broadcast_policy", "param_deltas", "base_sha256s", "recipe", "sample_indices", "keep_inner_state", "peer_averaging")
    MODEL_CONFIG_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SHA256_FIELD_NUMBER: _ClassVar[int]
    INNER_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_POLICY_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_POLICY_FIELD_NUMBER: _ClassVar[int]
    PARAM_DELTAS_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256S_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDICES_FIELD_NUMBER: _ClassVar[int]
    KEEP_INNER_STATE_FIELD_NUMBER: _ClassVar[int]
    PEER_AVERAGING_FIELD_NUMBER: _ClassVar[int]
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
    param_deltas: _containers.RepeatedCompositeFieldContainer[ParamDelta]
    base_sha256s: _containers.RepeatedScalarFieldContainer[str]
    recipe: Recipe
    sample_indices: _containers.RepeatedScalarFieldContainer[int]
    keep_inner_state: bool
    peer_averaging: PeerAveraging
    def __init__(self, model_config_sha256: _Optional[str] = ..., params_sha256: _Optional[str] = ..., tokens_sha256: _Optional[str] = ..., inner_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., seq_len: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., seed: _Optional[int] = ..., update_policy: _Optional[_Union[CompressionPolicy, _Mapping]] = ..., broadcast_policy: _Optional[_Union[CompressionPolicy, _Mapping]] = ..., param_deltas: _Optional[_Iterable[_Union[ParamDelta, _Mapping]]] = ..., base_sha256s: _Optional[_Iterable[str]] = ..., recipe: _Optional[_Union[Recipe, _Mapping]] = ..., sample_indices: _Optional[_Iterable[int]] = ..., keep_inner_state: _Optional[bool] = ..., peer_averaging: _Optional[_Union[PeerAveraging, _Mapping]] = ...) -> None: ...

class PeerAveraging(_message.Message):
    __slots__ = ("group_size", "timeout_s", "group_key")
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    GROUP_KEY_FIELD_NUMBER: _ClassVar[int]
    group_size: int
    timeout_s: float
    group_key: str
    def __init__(self, group_size: _Optional[int] = ..., timeout_s: _Optional[float] = ..., group_key: _Optional[str] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("objective", "dpo_beta", "adapter")
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    DPO_BETA_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    objective: str
    dpo_beta: float
    adapter: Adapter
    def __init__(self, objective: _Optional[str] = ..., dpo_beta: _Optional[float] = ..., adapter: _Optional[_Union[Adapter, _Mapping]] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("kind", "rank", "alpha", "dropout", "target_modules")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("model_config_sha256", "params_sha256", "base_sha256s", "data_sha256", "recipe", "batch_size", "max_examples", "seq_len", "broadcast_policy", "param_deltas")
    MODEL_CONFIG_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256S_FIELD_NUMBER: _ClassVar[int]
    DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_POLICY_FIELD_NUMBER: _ClassVar[int]
    PARAM_DELTAS_FIELD_NUMBER: _ClassVar[int]
    model_config_sha256: str
    params_sha256: str
    base_sha256s: _containers.RepeatedScalarFieldContainer[str]
    data_sha256: str
    recipe: Recipe
    batch_size: int
    max_examples: int
    seq_len: int
    broadcast_policy: CompressionPolicy
    param_deltas: _containers.RepeatedCompositeFieldContainer[ParamDelta]
    def __init__(self, model_config_sha256: _Optional[str] = ..., params_sha256: _Optional[str] = ..., base_sha256s: _Optional[_Iterable[str]] = ..., data_sha256: _Optional[str] = ..., recipe: _Optional[_Union[Recipe, _Mapping]] = ..., batch_size: _Optional[int] = ..., max_examples: _Optional[int] = ..., seq_len: _Optional[int] = ..., broadcast_policy: _Optional[_Union[CompressionPolicy, _Mapping]] = ..., param_deltas: _Optional[_Iterable[_Union[ParamDelta, _Mapping]]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "version", "lease_deadline_unix_s", "max_result_bytes", "train", "evaluate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    version: int
    lease_deadline_unix_s: float
    max_result_bytes: int
    train: TrainTask
    evaluate: EvaluateTask
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., lease_deadline_unix_s: _Optional[float] = ..., max_result_bytes: _Optional[int] = ..., train: _Optional[_Union[TrainTask, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ...) -> None: ...

class LeaseTaskResponse(_message.Message):
    __slots__ = ("task", "retry_after_s", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: Task
    retry_after_s: float
    reason: str
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., retry_after_s: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class FetchBlobRequest(_message.Message):
    __slots__ = ("session", "sha256", "offset")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    session: Session
    sha256: str
    offset: int
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class TaskMetrics(_message.Message):
    __slots__ = ("loss_first", "loss_last", "loss_mean", "tokens", "compute_s", "steps", "eval_loss", "token_accuracy", "reward_accuracy", "reward_margin", "examples")
    LOSS_FIRST_FIELD_NUMBER: _ClassVar[int]
    LOSS_LAST_FIELD_NUMBER: _ClassVar[int]
    LOSS_MEAN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REWARD_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REWARD_MARGIN_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    loss_first: float
    loss_last: float
    loss_mean: float
    tokens: int
    compute_s: float
    steps: int
    eval_loss: float
    token_accuracy: float
    reward_accuracy: float
    reward_margin: float
    examples: int
    def __init__(self, loss_first: _Optional[float] = ..., loss_last: _Optional[float] = ..., loss_mean: _Optional[float] = ..., tokens: _Optional[int] = ..., compute_s: _Optional[float] = ..., steps: _Optional[int] = ..., eval_loss: _Optional[float] = ..., token_accuracy: _Optional[float] = ..., reward_accuracy: _Optional[float] = ..., reward_margin: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("session", "task_id", "metrics", "payload_sha256", "payload_size", "signature", "group_task_ids", "group_payload_task_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    GROUP_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_PAYLOAD_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    session: Session
    task_id: str
    metrics: TaskMetrics
    payload_sha256: str
    payload_size: int
    signature: bytes
    group_task_ids: _containers.RepeatedScalarFieldContainer[str]
    group_payload_task_id: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., task_id: _Optional[str] = ..., metrics: _Optional[_Union[TaskMetrics, _Mapping]] = ..., payload_sha256: _Optional[str] = ..., payload_size: _Optional[int] = ..., signature: _Optional[bytes] = ..., group_task_ids: _Optional[_Iterable[str]] = ..., group_payload_task_id: _Optional[str] = ...) -> None: ...

class SubmitResultChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitResultResponse(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ReportFailureRequest(_message.Message):
    __slots__ = ("session", "task_id", "kind", "message")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session: Session
    task_id: str
    kind: FailureKind
    message: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., task_id: _Optional[str] = ..., kind: _Optional[_Union[FailureKind, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ReportFailureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FindPeersRequest(_message.Message):
    __slots__ = ("session", "task_id", "addrs")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    session: Session
    task_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., task_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class FindPeersResponse(_message.Message):
    __slots__ = ("addrs",)
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addrs: _Optional[_Iterable[str]] = ...) -> None: ...
