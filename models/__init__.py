"""Model families, tokenization, token shards, trainable parameters and the training loops."""

from swarm.models.architectures import (
    FAMILIES,
    PRESETS,
    build_model,
    config_from_bytes,
    config_to_bytes,
    count_parameters,
    preset_config,
)
from swarm.models.corpus import load_builtin_text
from swarm.models.params import (
    load_trainable_state,
    parameter_shapes,
    state_from_bytes,
    state_to_bytes,
    trainable_state,
)
from swarm.models.shards import decode_shard, encode_shard, split_tokens
from swarm.models.tokenizer import VOCAB_SIZE, decode_tokens, encode_text
from swarm.models.training import (
    InnerLoopConfig,
    InnerLoopInterrupted,
    InnerLoopResult,
    evaluate_loss,
    run_inner_loop,
)

__all__ = [
    "FAMILIES",
    "PRESETS",
    "VOCAB_SIZE",
    "InnerLoopConfig",
    "InnerLoopInterrupted",
    "InnerLoopResult",
    "build_model",
    "config_from_bytes",
    "config_to_bytes",
    "count_parameters",
    "decode_shard",
    "decode_tokens",
    "encode_shard",
    "encode_text",
    "evaluate_loss",
    "load_builtin_text",
    "load_trainable_state",
    "parameter_shapes",
    "preset_config",
    "run_inner_loop",
    "split_tokens",
    "state_from_bytes",
    "state_to_bytes",
    "trainable_state",
]
