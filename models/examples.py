"""Example shards: tokenized conversations and preference pairs as pure data.

A shard is safetensors (named int arrays, never pickle) compressed with zstd. A set of
sequences is three arrays: the ids of all sequences end to end, the mask of the tokens the loss
counts, and the offsets where each sequence starts. An SFT shard holds one set (`sequences`);
a DPO shard two aligned sets (`chosen`, `rejected`: pair i is sequence i of each).
Decoding checks everything a hostile or corrupt blob could get wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from swarm.models.chat import TokenizedSequence
from swarm.models.shards import decompress_bounded
from swarm.protocol.errors import ConfigError

MAX_SHARD_BYTES = 512 * 1024 * 1024
SET_NAMES = {"sft": ("sequences",), "dpo": ("chosen", "rejected")}


@dataclass(frozen=True)
class SequenceSet:
    """Sequences of token ids with a loss mask, stored end to end."""

    ids: np.ndarray  # int32 [total]
    mask: np.ndarray  # uint8 [total]
    offsets: np.ndarray  # int64 [n + 1], offsets[0] == 0, offsets[-1] == total

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_sequences(cls, sequences: Sequence[TokenizedSequence]) -> SequenceSet:
        lengths = [len(s.ids) for s in sequences]
        return cls(
            ids=np.concatenate([s.ids for s in sequences]).astype(np.int32),
            mask=np.concatenate([s.mask for s in sequences]).astype(np.uint8),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )

    def subset(self, indices: Sequence[int]) -> SequenceSet:
        return SequenceSet.from_sequences(
            [
                TokenizedSequence(
                    ids=self.ids[self.offsets[i] : self.offsets[i + 1]],
                    mask=self.mask[self.offsets[i] : self.offsets[i + 1]],
                    truncated=False,
                )
                for i in indices
            ]
        )

    def batch(self, indices: Sequence[int], pad_id: int) -> Batch:
        """Right-padded tensors of the sequences at `indices`."""
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        width = max(lengths)
        input_ids = np.full((len(indices), width), pad_id, dtype=np.int64)
        loss_mask = np.zeros((len(indices), width), dtype=bool)
        attention = np.zeros((len(indices), width), dtype=np.int64)
        for row, (i, length) in enumerate(zip(indices, lengths, strict=True)):
            start = self.offsets[i]
            input_ids[row, :length] = self.ids[start : start + length]
            loss_mask[row, :length] = self.mask[start : start + length].astype(bool)
            attention[row, :length] = 1
        return Batch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention),
            loss_mask=torch.from_numpy(loss_mask),
        )


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64, 0 on padding
    loss_mask: torch.Tensor  # [B, T] bool, True on tokens the loss counts

    @property
    def labels(self) -> torch.Tensor:
        """Labels for a transformers causal LM: -100 wherever the loss does not count."""
        return self.input_ids.masked_fill(~self.loss_mask, -100)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_examples(sets: dict[str, SequenceSet]) -> bytes:
    """Serialize named sequence sets as one zstd-compressed safetensors shard."""
    arrays: dict[str, np.ndarray] = {}
    for name, sequences in sets.items():
        arrays[f"{name}.ids"] = sequences.ids
        arrays[f"{name}.mask"] = sequences.mask
        arrays[f"{name}.offsets"] = sequences.offsets
    return zstandard.ZstdCompressor(level=10).compress(save_arrays(arrays))


def decode_examples(data: bytes, method: str, vocab_size: int) -> dict[str, SequenceSet]:
    """Parse and check a shard made by `encode_examples` for `method` (`sft` or `dpo`)."""
    names = SET_NAMES.get(method)
    if names is None:
        raise ConfigError(f"no example shards for method {method!r}")
    try:
        arrays = load_arrays(decompress_bounded(data, MAX_SHARD_BYTES, "example shard"))
    except (zstandard.ZstdError, SafetensorError, ValueError) as exc:
        raise ConfigError(f"example shard is not valid zstd safetensors: {exc}") from None
    expected = {f"{n}.{part}" for n in names for part in ("ids", "mask", "offsets")}
    if set(arrays) != expected:
        raise ConfigError(f"example shard holds {sorted(arrays)}, expected {sorted(expected)}")
    sets = {n: _checked_set(n, arrays, vocab_size) for n in names}
    if len({len(s) for s in sets.values()}) != 1:
        raise ConfigError("the chosen and rejected sets of a preference shard differ in length")
    return sets


def _checked_set(name: str, arrays: dict[str, np.ndarray], vocab_size: int) -> SequenceSet:
    ids, mask, offsets = (arrays[f"{name}.{part}"] for part in ("ids", "mask", "offsets"))
    if (ids.dtype, mask.dtype, offsets.dtype) != (np.int32, np.uint8, np.int64):
        raise ConfigError(f"example shard set {name!r} has the wrong dtypes")
    if ids.ndim != 1 or mask.shape != ids.shape or offsets.ndim != 1 or len(offsets) < 2:
        raise ConfigError(f"example shard set {name!r} has inconsistent shapes")
    if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) <= 0):
        raise ConfigError(f"example shard set {name!r} has bad offsets")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ConfigError(f"example shard set {name!r} has ids outside [0, {vocab_size})")
    if np.any(np.add.reduceat(mask, offsets[:-1]) == 0):
        raise ConfigError(f"example shard set {name!r} has a sequence with no trained tokens")
    return SequenceSet(ids=ids, mask=mask, offsets=offsets)
