"""Round trips between the swarm.v1 dataclasses and their protobuf messages."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.protocol import messages as m
from swarm.protocol.generated import worker_pb2 as pb

DATACLASSES = sorted(
    (
        obj
        for obj in vars(m).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == m.__name__
    ),
    key=lambda cls: cls.__name__,
)

# Messages that exist only on the wire: a oneof wrapper the service layer unpacks itself.
WIRE_ONLY_MESSAGES = {"SubmitResultChunk"}

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
}


def _nested_dataclass(hint: Any) -> type | None:
    if typing.get_origin(hint) is list:
        return None
    for candidate in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _scalar(descriptor: FieldDescriptor, hint: Any) -> st.SearchStrategy[Any]:
    cpp = descriptor.cpp_type
    if cpp in _INT_RANGES:
        low, high = _INT_RANGES[cpp]
        return st.integers(low, high)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=False)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return st.sampled_from(list(hint))
    if descriptor.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return st.text(max_size=32)


def instances(cls: type) -> st.SearchStrategy[Any]:
    """Arbitrary valid instances of a message dataclass, with values the wire can carry."""
    fields = getattr(pb, cls.__name__).DESCRIPTOR.fields_by_name
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for name, hint in hints.items():
        descriptor = fields[name]
        nested = _nested_dataclass(hint)
        if nested is not None:
            strategy = instances(nested)
            if type(None) in typing.get_args(hint):
                strategy = st.none() | strategy
        elif typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            items = instances(item) if dataclasses.is_dataclass(item) else _scalar(descriptor, item)
            strategy = st.lists(items, max_size=4)
        else:
            strategy = _scalar(descriptor, hint)
        kwargs[name] = strategy
    strategy = st.builds(cls, **kwargs)
    oneof = [f.name for f in fields.values() if f.containing_oneof is not None]
    # A oneof carries at most one of its fields.
    return strategy.filter(lambda obj: sum(getattr(obj, n) is not None for n in oneof) <= 1)


def wire_round_trip(obj: Any) -> Any:
    message_cls = getattr(pb, type(obj).__name__)
    encoded = m.to_proto(obj, message_cls).SerializeToString()
    return m.from_proto(message_cls.FromString(encoded), type(obj))


def test_every_proto_message_has_a_dataclass_with_the_same_fields() -> None:
    by_name = {cls.__name__: cls for cls in DATACLASSES}
    proto_names = set(pb.DESCRIPTOR.message_types_by_name) - WIRE_ONLY_MESSAGES
    assert proto_names == set(by_name)
    for name in proto_names:
        proto_fields = set(pb.DESCRIPTOR.message_types_by_name[name].fields_by_name)
        assert proto_fields == {f.name for f in dataclasses.fields(by_name[name])}, name


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_dataclass_survives_the_wire(cls: type, data: st.DataObject) -> None:
    original = data.draw(instances(cls))
    decoded = wire_round_trip(original)
    assert decoded == original
    assert type(decoded) is cls


def _train_task() -> m.TrainTask:
    return m.TrainTask(
        model_config_sha256="a" * 64,
        params_sha256="b" * 64,
        tokens_sha256="c" * 64,
        inner_steps=20,
        batch_size=4,
        seq_len=32,
        learning_rate=3e-3,
        weight_decay=0.01,
        max_grad_norm=1.0,
        warmup_steps=2,
        seed=2**63 - 1,
        update_policy=m.CompressionPolicy(
            chain="int8:block=64", small_chain="fp16", small_elements=4096
        ),
        broadcast_policy=m.CompressionPolicy(
            chain="int8:block=64+zstd", small_chain="fp32", small_elements=4096
        ),
        param_deltas=[
            m.ParamDelta(version=3, delta_sha256="d" * 64, size_bytes=123, params_sha256="e" * 64)
        ],
    )


def _task(train: m.TrainTask | None) -> m.Task:
    return m.Task(
        task_id="task-1",
        job_id="ftjob-1",
        round=3,
        version=3,
        lease_deadline_unix_s=1_700_000_000.5,
        max_result_bytes=1 << 20,
        train=train,
    )


def test_task_without_train_spec_stays_absent() -> None:
    message = m.to_proto(_task(None), pb.Task)
    assert not message.HasField("train")
    assert message.WhichOneof("spec") is None
    assert wire_round_trip(_task(None)).train is None


def test_task_with_train_spec_keeps_it() -> None:
    message = m.to_proto(_task(_train_task()), pb.Task)
    assert message.WhichOneof("spec") == "train"
    assert wire_round_trip(_task(_train_task())).train == _train_task()


def test_train_spec_with_all_default_values_is_still_present() -> None:
    empty = m.TrainTask(
        model_config_sha256="",
        params_sha256="",
        tokens_sha256="",
        inner_steps=0,
        batch_size=0,
        seq_len=0,
        learning_rate=0.0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        seed=0,
        update_policy=m.CompressionPolicy(chain="", small_chain="", small_elements=0),
        broadcast_policy=m.CompressionPolicy(chain="", small_chain="", small_elements=0),
    )
    assert wire_round_trip(_task(empty)).train == empty


def test_empty_lease_response_has_no_task() -> None:
    response = m.LeaseTaskResponse(retry_after_s=2.0, reason="no tasks are waiting")
    assert not m.to_proto(response, pb.LeaseTaskResponse).HasField("task")
    assert wire_round_trip(response) == response
    assert wire_round_trip(m.LeaseTaskResponse(task=_task(_train_task()))).task == _task(
        _train_task()
    )


@pytest.mark.parametrize("kind", list(m.FailureKind), ids=lambda k: k.name)
def test_failure_kind_round_trips_as_the_enum(kind: m.FailureKind) -> None:
    request = m.ReportFailureRequest(
        session=m.Session(worker_id="w", token=b"t"), task_id="task-1", kind=kind
    )
    message = m.to_proto(request, pb.ReportFailureRequest)
    assert message.kind == int(kind)
    decoded = wire_round_trip(request)
    assert decoded.kind is kind
    assert isinstance(decoded.kind, enum.IntEnum)


def test_failure_kind_values_match_the_proto_enum() -> None:
    proto_values = {
        value.name.removeprefix("FAILURE_KIND_"): value.number
        for value in pb.FailureKind.DESCRIPTOR.values
    }
    assert proto_values == {kind.name: kind.value for kind in m.FailureKind}


def test_unknown_failure_kind_from_a_newer_peer_reads_as_unspecified() -> None:
    raw = pb.ReportFailureRequest(task_id="task-1", kind=7).SerializeToString()
    decoded = m.from_proto(pb.ReportFailureRequest.FromString(raw), m.ReportFailureRequest)
    assert decoded.kind is m.FailureKind.UNSPECIFIED
    assert decoded.task_id == "task-1"


def test_repeated_fields_come_back_as_lists_in_order() -> None:
    request = m.HeartbeatRequest(session=m.Session(worker_id="w", token=b""), task_ids=["b", "a"])
    decoded = wire_round_trip(request)
    assert decoded.task_ids == ["b", "a"]
    assert isinstance(decoded.task_ids, list)


METRICS = m.TaskMetrics(
    loss_first=5.5, loss_last=3.25, loss_mean=4.0, tokens=2560, compute_s=1.5, steps=20
)
DIGEST = "d" * 64


def test_signing_bytes_are_deterministic() -> None:
    first = m.result_signing_bytes("task-1", DIGEST, METRICS)
    again = m.result_signing_bytes("task-1", DIGEST, m.TaskMetrics(**dataclasses.asdict(METRICS)))
    assert first == again


def test_signing_bytes_change_with_the_task_id() -> None:
    assert m.result_signing_bytes("task-1", DIGEST, METRICS) != m.result_signing_bytes(
        "task-2", DIGEST, METRICS
    )


def test_signing_bytes_change_with_the_payload_digest() -> None:
    assert m.result_signing_bytes("task-1", DIGEST, METRICS) != m.result_signing_bytes(
        "task-1", "e" * 64, METRICS
    )


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(m.TaskMetrics)])
def test_signing_bytes_change_with_every_metric(name: str) -> None:
    changed = dataclasses.replace(METRICS, **{name: getattr(METRICS, name) + 1})
    assert m.result_signing_bytes("task-1", DIGEST, METRICS) != m.result_signing_bytes(
        "task-1", DIGEST, changed
    )


@settings(max_examples=50, deadline=None)
@given(a=instances(m.TaskMetrics), b=instances(m.TaskMetrics))
def test_signing_bytes_differ_whenever_metrics_differ(a: m.TaskMetrics, b: m.TaskMetrics) -> None:
    same = m.result_signing_bytes("t", DIGEST, a) == m.result_signing_bytes("t", DIGEST, b)
    # -0.0 and 0.0 compare equal as floats yet differ on the wire; only the converse matters.
    if a != b:
        assert not same
