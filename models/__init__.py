"""Model families and sources, adapters, tokenized data, objectives and the training loop."""

from swarm.models.adapters import AdapterConfig, apply_adapter, is_lora, merged_model
from swarm.models.architectures import (
    FAMILIES,
    PRESETS,
    build_model,
    config_from_bytes,
    config_to_bytes,
    count_parameters,
    preset_config,
)
from swarm.models.corpus import is_builtin, load_builtin_bytes, load_builtin_text
from swarm.models.datasets import (
    MAX_DATASET_BYTES,
    ChatExample,
    DatasetKind,
    PreferenceExample,
    detect_format,
    parse_dataset,
)
from swarm.models.examples import SequenceSet, decode_examples, encode_examples
from swarm.models.objectives import (
    METHODS,
    DirectPreference,
    LanguageModeling,
    Objective,
    SupervisedFineTuning,
    build_objective,
)
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
    batches_of,
    optimizer_state_mismatch,
    run_inner_loop,
    sample_order,
)

__all__ = [
    "FAMILIES",
    "MAX_DATASET_BYTES",
    "METHODS",
    "PRESETS",
    "VOCAB_SIZE",
    "AdapterConfig",
    "ChatExample",
    "DatasetKind",
    "DirectPreference",
    "InnerLoopConfig",
    "InnerLoopInterrupted",
    "InnerLoopResult",
    "LanguageModeling",
    "Objective",
    "PreferenceExample",
    "SequenceSet",
    "SupervisedFineTuning",
    "apply_adapter",
    "batches_of",
    "build_model",
    "build_objective",
    "config_from_bytes",
    "config_to_bytes",
    "count_parameters",
    "decode_examples",
    "decode_shard",
    "decode_tokens",
    "detect_format",
    "encode_examples",
    "encode_shard",
    "encode_text",
    "is_builtin",
    "is_lora",
    "load_builtin_bytes",
    "load_builtin_text",
    "load_trainable_state",
    "merged_model",
    "optimizer_state_mismatch",
    "parameter_shapes",
    "parse_dataset",
    "preset_config",
    "run_inner_loop",
    "sample_order",
    "split_tokens",
    "state_from_bytes",
    "state_to_bytes",
    "trainable_state",
]
