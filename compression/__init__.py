"""Codecs for updates and activations, error feedback, and the streaming wire payload."""

from swarm.compression.chains import CHAIN_PRESETS, Chain, EncodedTensor, parse_chain
from swarm.compression.deltas import apply_delta, make_delta
from swarm.compression.feedback import ErrorFeedback
from swarm.compression.payload import (
    decode_payload,
    encode_payload,
    encode_stream,
    iter_payload,
    payload_size_bound,
    plan_records,
    read_header,
    record_seed,
)
from swarm.compression.policy import CompressionPolicy
from swarm.compression.powersgd import PowerSGD
from swarm.compression.quantization import BlockQuant, Cast, RowQuant
from swarm.compression.sparsification import RandomK, TopK, random_subset_mask
from swarm.compression.stages import Stage, TransformStage, ValueStage

__all__ = [
    "CHAIN_PRESETS",
    "BlockQuant",
    "Cast",
    "Chain",
    "CompressionPolicy",
    "EncodedTensor",
    "ErrorFeedback",
    "PowerSGD",
    "RandomK",
    "RowQuant",
    "Stage",
    "TopK",
    "TransformStage",
    "ValueStage",
    "apply_delta",
    "decode_payload",
    "encode_payload",
    "encode_stream",
    "iter_payload",
    "make_delta",
    "parse_chain",
    "payload_size_bound",
    "plan_records",
    "random_subset_mask",
    "read_header",
    "record_seed",
]
