"""Example shards: round trips, padded batches, and the checks that stop hostile shards."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import zstandard
from safetensors.numpy import save as save_arrays

from swarm.models import examples
from swarm.models.chat import TokenizedSequence, byte_chat_tokenizer, tokenize_preference
from swarm.models.datasets import PreferenceExample
from swarm.models.examples import Batch, SequenceSet, decode_examples, encode_examples
from swarm.models.objectives import build_objective
from swarm.models.sources import load_preset
from swarm.protocol.errors import ConfigError

VOCAB = 259
Arrays = dict[str, np.ndarray]


def seq(ids: list[int], mask: list[int]) -> TokenizedSequence:
    return TokenizedSequence(
        ids=np.asarray(ids, dtype=np.int32), mask=np.asarray(mask, dtype=np.uint8), truncated=False
    )


SEQUENCES = SequenceSet.from_sequences(
    [
        seq([258, 10, 11, 12, 256], [0, 0, 1, 1, 1]),
        seq([258, 20, 256], [0, 1, 1]),
        seq([258, 30, 31, 32, 33, 34, 256], [0, 0, 0, 1, 0, 1, 1]),
    ]
)


def preference_sets() -> dict[str, SequenceSet]:
    tokenizer = byte_chat_tokenizer()
    pairs = [
        tokenize_preference(
            tokenizer,
            PreferenceExample(
                prompt=({"role": "user", "content": q},), chosen=c, rejected=r, line=i + 1
            ),
            max_tokens=128,
        )
        for i, (q, c, r) in enumerate([("2+2?", "4", "five"), ("Hi", "Hello!", "Go away")])
    ]
    return {
        "chosen": SequenceSet.from_sequences([c for c, _ in pairs]),
        "rejected": SequenceSet.from_sequences([r for _, r in pairs]),
    }


def assert_same_set(left: SequenceSet, right: SequenceSet) -> None:
    for part in ("ids", "mask", "offsets"):
        a, b = getattr(left, part), getattr(right, part)
        assert a.dtype == b.dtype, part
        assert np.array_equal(a, b), part


def sft_arrays() -> Arrays:
    return {
        "sequences.ids": SEQUENCES.ids.copy(),
        "sequences.mask": SEQUENCES.mask.copy(),
        "sequences.offsets": SEQUENCES.offsets.copy(),
    }


def pack(arrays: Arrays) -> bytes:
    return zstandard.ZstdCompressor().compress(save_arrays(arrays))


def refused(data: bytes, method: str = "sft", vocab_size: int = VOCAB) -> str:
    with pytest.raises(ConfigError) as caught:
        decode_examples(data, method, vocab_size)
    return str(caught.value)


# ---- sequence sets and batches -------------------------------------------------------------


def test_from_sequences_lays_sequences_end_to_end() -> None:
    assert len(SEQUENCES) == 3
    assert SEQUENCES.offsets.tolist() == [0, 5, 8, 15]
    assert (SEQUENCES.ids.dtype, SEQUENCES.mask.dtype, SEQUENCES.offsets.dtype) == (
        np.int32,
        np.uint8,
        np.int64,
    )
    assert SEQUENCES.ids[5:8].tolist() == [258, 20, 256]


def test_subset_picks_sequences_in_the_order_given() -> None:
    subset = SEQUENCES.subset([2, 0])
    assert subset.offsets.tolist() == [0, 7, 12]
    assert subset.ids.tolist() == [*SEQUENCES.ids[8:15].tolist(), *SEQUENCES.ids[0:5].tolist()]
    assert subset.mask.tolist() == [*SEQUENCES.mask[8:15].tolist(), *SEQUENCES.mask[0:5].tolist()]


def test_batch_right_pads_and_masks_the_padding_out() -> None:
    batch = SEQUENCES.batch([1, 2, 0], pad_id=7)
    assert batch.input_ids.shape == (3, 7)
    assert batch.input_ids.dtype == torch.int64
    assert batch.input_ids[0].tolist() == [258, 20, 256, 7, 7, 7, 7]
    assert batch.attention_mask.tolist() == [[1] * 3 + [0] * 4, [1] * 7, [1] * 5 + [0] * 2]
    assert batch.loss_mask.dtype == torch.bool
    assert batch.loss_mask[2].tolist() == [False, False, True, True, True, False, False]
    assert not batch.loss_mask[batch.attention_mask == 0].any()
    assert batch.num_tokens == 3 + 7 + 5


def test_labels_are_minus_100_exactly_where_the_loss_does_not_count() -> None:
    batch = SEQUENCES.batch([0, 1, 2], pad_id=0)
    labels = batch.labels
    assert torch.equal(labels == -100, ~batch.loss_mask)
    assert torch.equal(labels[batch.loss_mask], batch.input_ids[batch.loss_mask])
    assert int((labels != -100).sum()) == int(SEQUENCES.mask.sum()) == 8


def test_padding_does_not_change_what_the_model_sees() -> None:
    model = load_preset("micro-llama", chat=True).model.eval()
    padded = SEQUENCES.batch([1, 2], pad_id=0)
    alone = SEQUENCES.batch([1], pad_id=0)
    assert isinstance(padded, Batch)
    with torch.no_grad():
        batched = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
        single = model(input_ids=alone.input_ids, attention_mask=alone.attention_mask).logits
    torch.testing.assert_close(batched[0, :3], single[0], rtol=1e-5, atol=1e-5)


# ---- shard round trips ---------------------------------------------------------------------


def test_sft_shard_round_trips() -> None:
    data = encode_examples({"sequences": SEQUENCES})
    assert zstandard.frame_content_size(data) > 0
    decoded = decode_examples(data, "sft", VOCAB)
    assert list(decoded) == ["sequences"]
    assert_same_set(decoded["sequences"], SEQUENCES)


def test_dpo_shard_round_trips() -> None:
    sets = preference_sets()
    decoded = decode_examples(encode_examples(sets), "dpo", VOCAB)
    assert sorted(decoded) == ["chosen", "rejected"]
    for name in sets:
        assert_same_set(decoded[name], sets[name])


def test_ids_just_below_the_vocabulary_are_accepted() -> None:
    data = encode_examples({"sequences": SEQUENCES})
    assert int(SEQUENCES.ids.max()) == 258
    assert len(decode_examples(data, "sft", vocab_size=259)["sequences"]) == 3
    assert "outside [0, 258)" in refused(data, vocab_size=258)


# ---- hostile and corrupt shards ------------------------------------------------------------


def test_unknown_method_is_refused() -> None:
    data = encode_examples({"sequences": SEQUENCES})
    assert "method 'lm'" in refused(data, method="lm")


def test_shard_of_the_other_method_is_refused_by_its_keys() -> None:
    sft = encode_examples({"sequences": SEQUENCES})
    dpo = encode_examples(preference_sets())
    assert "expected ['chosen.ids'" in refused(sft, method="dpo")
    assert "expected ['sequences.ids'" in refused(dpo, method="sft")


def drop(key: str) -> Callable[[Arrays], None]:
    def corrupt(arrays: Arrays) -> None:
        del arrays[key]

    return corrupt


def add(key: str) -> Callable[[Arrays], None]:
    return lambda arrays: arrays.update({key: np.zeros(1, np.int32)})


def set_array(key: str, value: np.ndarray) -> Callable[[Arrays], None]:
    return lambda arrays: arrays.update({key: value})


def retype(key: str, dtype: type) -> Callable[[Arrays], None]:
    return lambda arrays: arrays.update({key: arrays[key].astype(dtype)})


CORRUPTIONS: dict[str, tuple[Callable[[Arrays], None], str]] = {
    "missing mask": (drop("sequences.mask"), "expected"),
    "extra array": (add("sequences.extra"), "expected"),
    "ids int64": (retype("sequences.ids", np.int64), "wrong dtypes"),
    "ids uint32": (retype("sequences.ids", np.uint32), "wrong dtypes"),
    "mask bool": (retype("sequences.mask", np.bool_), "wrong dtypes"),
    "offsets int32": (retype("sequences.offsets", np.int32), "wrong dtypes"),
    "ids 2-D": (
        set_array("sequences.ids", SEQUENCES.ids.reshape(3, 5)),
        "inconsistent shapes",
    ),
    "short mask": (set_array("sequences.mask", SEQUENCES.mask[:-1]), "inconsistent shapes"),
    "one offset": (set_array("sequences.offsets", np.array([0], np.int64)), "inconsistent"),
    "non-monotonic offsets": (
        set_array("sequences.offsets", np.array([0, 8, 5, 15], np.int64)),
        "bad offsets",
    ),
    "empty sequence": (
        set_array("sequences.offsets", np.array([0, 5, 5, 15], np.int64)),
        "bad offsets",
    ),
    "offsets end short": (
        set_array("sequences.offsets", np.array([0, 5, 8, 14], np.int64)),
        "bad offsets",
    ),
    "offsets end long": (
        set_array("sequences.offsets", np.array([0, 5, 8, 16], np.int64)),
        "bad offsets",
    ),
    "offsets start late": (
        set_array("sequences.offsets", np.array([1, 5, 8, 15], np.int64)),
        "bad offsets",
    ),
    "id past the vocabulary": (
        set_array("sequences.ids", np.where(SEQUENCES.ids == 20, VOCAB, SEQUENCES.ids)),
        "outside [0, 259)",
    ),
    "negative id": (
        set_array("sequences.ids", np.where(SEQUENCES.ids == 20, -1, SEQUENCES.ids)),
        "outside [0, 259)",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_sft_shard_is_refused(case: str) -> None:
    corrupt, message = CORRUPTIONS[case]
    arrays = sft_arrays()
    assert decode_examples(pack(arrays), "sft", VOCAB)  # intact, the shard decodes
    corrupt(arrays)
    assert message in refused(pack(arrays))


def test_preference_sets_of_different_lengths_are_refused() -> None:
    sets = preference_sets()
    sets["rejected"] = sets["rejected"].subset([0])
    assert "differ in length" in refused(encode_examples(sets), method="dpo")


def test_bad_rejected_set_is_refused_by_name() -> None:
    sets = preference_sets()
    rejected = sets["rejected"]
    sets["rejected"] = SequenceSet(
        ids=rejected.ids, mask=rejected.mask, offsets=rejected.offsets[::-1].copy()
    )
    assert "set 'rejected' has bad offsets" in refused(encode_examples(sets), method="dpo")


@pytest.mark.parametrize(
    "data",
    [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd\x00garbage"],
    ids=["empty", "text", "truncated frame"],
)
def test_bytes_that_are_not_zstd_are_refused(data: bytes) -> None:
    assert "not valid zstd safetensors" in refused(data)


def test_zstd_that_is_not_safetensors_is_refused() -> None:
    data = zstandard.ZstdCompressor().compress(b"\x00" * 64)
    assert "not valid zstd safetensors" in refused(data)


def test_frame_declaring_a_huge_size_is_refused_before_decompressing() -> None:
    # A frame header alone: magic, single-segment with an 8-byte content size, one empty block.
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little")
    bomb = header + bytes([1, 0, 0])
    assert zstandard.frame_content_size(bomb) == 1 << 40
    assert f"declares {1 << 40} bytes" in refused(bomb)


def test_streamed_frame_is_cut_off_at_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = save_arrays(sft_arrays())
    writer = zstandard.ZstdCompressor().compressobj()  # no content size in the header
    streamed = writer.compress(raw) + writer.flush()
    assert zstandard.frame_content_size(streamed) == -1
    assert len(decode_examples(streamed, "sft", VOCAB)["sequences"]) == 3
    monkeypatch.setattr(examples, "MAX_SHARD_BYTES", len(raw) - 1)
    assert "not valid zstd safetensors" in refused(streamed)


def test_shard_without_trained_tokens_is_refused() -> None:
    arrays = sft_arrays()
    arrays["sequences.mask"] = np.zeros_like(arrays["sequences.mask"])
    model = load_preset("micro-llama", chat=True).model
    with pytest.raises(ConfigError):
        objective = build_objective("sft", pack(arrays), vocab_size=VOCAB, seq_len=16)
        objective.evaluate(model, batch_size=2, max_examples=3)
