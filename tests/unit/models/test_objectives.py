"""Objectives: SFT and DPO losses against hand computations, and DPO learning a preference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from swarm.models.adapters import AdapterConfig, apply_adapter
from swarm.models.architectures import build_model
from swarm.models.chat import TokenizedSequence, byte_chat_tokenizer, tokenize_preference
from swarm.models.datasets import PreferenceExample
from swarm.models.examples import SequenceSet, encode_examples
from swarm.models.objectives import (
    DirectPreference,
    LanguageModeling,
    Objective,
    SupervisedFineTuning,
    build_objective,
    sequence_logps,
)
from swarm.models.shards import encode_shard
from swarm.models.sources import load_preset
from swarm.models.tokenizer import encode_text
from swarm.models.training import sample_order
from swarm.protocol.errors import ConfigError

VOCAB = 259


def micro(seed: int = 0) -> PreTrainedModel:
    return load_preset("micro-llama", seed=seed, chat=True).model


def seq(ids: list[int], mask: list[int]) -> TokenizedSequence:
    return TokenizedSequence(
        ids=np.asarray(ids, dtype=np.int32), mask=np.asarray(mask, dtype=np.uint8), truncated=False
    )


SEQUENCES = SequenceSet.from_sequences(
    [
        seq([258, 72, 105, 10, 79, 75, 256], [0, 0, 0, 0, 1, 1, 1]),
        seq([258, 50, 43, 50, 10, 52, 256, 10, 99], [0, 0, 0, 0, 0, 1, 1, 0, 1]),
        seq([258, 10, 33, 256], [0, 1, 0, 1]),
    ]
)


def token_logps(model: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, for one unpadded sequence."""
    tensor = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        logits = model(input_ids=tensor).logits[0, :-1]
    return logits.log_softmax(-1).gather(-1, tensor[0, 1:, None])[:, 0]


def parts(sequences: SequenceSet, i: int) -> tuple[np.ndarray, np.ndarray]:
    start, end = sequences.offsets[i], sequences.offsets[i + 1]
    return sequences.ids[start:end], sequences.mask[start:end].astype(bool)


def masked_nll_by_hand(
    model: torch.nn.Module, sequences: SequenceSet, indices: list[int]
) -> tuple[float, int]:
    """Summed negative log-likelihood of the masked tokens of each sequence, run alone."""
    total, count = 0.0, 0
    for i in indices:
        ids, mask = parts(sequences, i)
        total -= float(token_logps(model, ids)[torch.from_numpy(mask[1:])].sum())
        count += int(mask[1:].sum())
    return total, count


# ---- supervised fine-tuning ----------------------------------------------------------------


def test_sft_training_loss_is_the_masked_cross_entropy_of_the_named_batch() -> None:
    model = micro()
    objective = SupervisedFineTuning(SEQUENCES)
    assert objective.num_samples == len(SEQUENCES)
    indices = [2, 0, 1, 0]  # sequences of different lengths: the batch is padded
    loss, tokens = objective.training_loss(model, indices)
    total, count = masked_nll_by_hand(model, SEQUENCES, indices)
    assert loss.item() == pytest.approx(total / count, abs=1e-5)
    assert tokens == sum(int(SEQUENCES.offsets[i + 1] - SEQUENCES.offsets[i]) for i in indices)
    assert loss.requires_grad


def test_sft_loss_ignores_the_mask_on_the_first_token() -> None:
    # The first token has nothing before it to predict it from, so its mask bit cannot count.
    first_masked = SequenceSet.from_sequences([seq([258, 72, 105, 256], [1, 0, 1, 1])])
    unmasked = SequenceSet.from_sequences([seq([258, 72, 105, 256], [0, 0, 1, 1])])
    model = micro()
    first = SupervisedFineTuning(first_masked).evaluate(model, batch_size=1, max_examples=1)
    second = SupervisedFineTuning(unmasked).evaluate(model, batch_size=1, max_examples=1)
    assert first == second


def sequences_with_known_accuracy(model: torch.nn.Module) -> tuple[SequenceSet, int, int]:
    """Sequences whose masked tokens are the model's greedy choice, then its least likely one."""
    built: list[TokenizedSequence] = []
    num_correct = num_counted = 0
    for prompt, num_greedy in (([258, 72, 105, 10], 4), ([258, 10], 2)):
        ids = list(prompt)
        with torch.no_grad():
            for step in range(num_greedy + 2):
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.argmax() if step < num_greedy else logits.argmin()))
        built.append(seq(ids, [0] * len(prompt) + [1] * (num_greedy + 2)))
        num_correct += num_greedy
        num_counted += num_greedy + 2
    return SequenceSet.from_sequences(built), num_correct, num_counted


def test_sft_evaluation_is_token_weighted_loss_and_greedy_accuracy() -> None:
    model = micro(seed=1)
    sequences, num_correct, num_counted = sequences_with_known_accuracy(model)
    metrics = SupervisedFineTuning(sequences).evaluate(model, batch_size=2, max_examples=10)
    assert metrics["examples"] == 2.0
    assert metrics["token_accuracy"] == num_correct / num_counted == 6 / 10
    total, count = masked_nll_by_hand(model, sequences, [0, 1])
    assert count == num_counted
    assert metrics["loss"] == pytest.approx(total / count, abs=1e-5)


def test_sft_evaluation_does_not_depend_on_batching_and_respects_max_examples() -> None:
    model = micro()
    objective = SupervisedFineTuning(SEQUENCES)
    whole = objective.evaluate(model, batch_size=3, max_examples=3)
    one_by_one = objective.evaluate(model, batch_size=1, max_examples=3)
    assert whole["loss"] == pytest.approx(one_by_one["loss"], abs=1e-6)
    assert whole["token_accuracy"] == one_by_one["token_accuracy"]
    assert 0.0 <= whole["token_accuracy"] <= 1.0
    first_two = objective.evaluate(model, batch_size=3, max_examples=2)
    assert first_two["examples"] == 2.0
    total, count = masked_nll_by_hand(model, SEQUENCES, [0, 1])
    assert first_two["loss"] == pytest.approx(total / count, abs=1e-5)


# ---- language modelling --------------------------------------------------------------------

TOKENS = encode_text("a stitch in time saves nine; " * 12)


def test_lm_evaluation_is_deterministic_and_independent_of_batching() -> None:
    model = build_model(load_preset("micro-llama").config, seed=0)
    objective = LanguageModeling(TOKENS, seq_len=16)
    first = objective.evaluate(model, batch_size=4, max_examples=100)
    assert first == objective.evaluate(model, batch_size=4, max_examples=100)
    assert first["examples"] == float((len(TOKENS) - 1) // 16)
    assert first["loss"] == pytest.approx(
        objective.evaluate(model, batch_size=1, max_examples=100)["loss"], abs=1e-6
    )
    assert objective.evaluate(model, batch_size=4, max_examples=3)["examples"] == 3.0


def test_lm_samples_are_the_consecutive_windows_of_the_shard() -> None:
    model = build_model(load_preset("micro-llama").config, seed=0)
    objective = LanguageModeling(TOKENS, seq_len=16)
    assert objective.num_samples == len(TOKENS) // 16
    loss, tokens = objective.training_loss(model, [5, 0, 2])
    assert tokens == 3 * 16
    starts = [5 * 16, 0, 2 * 16]
    windows = torch.from_numpy(np.stack([TOKENS[s : s + 16] for s in starts]).astype(np.int64))
    with torch.no_grad():
        expected = model(input_ids=windows, labels=windows).loss
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("indices", [[], [0, 10_000], [-1]])
def test_a_batch_naming_samples_the_shard_lacks_is_refused(indices: list[int]) -> None:
    objective = LanguageModeling(TOKENS, seq_len=16)
    with pytest.raises(ConfigError, match="sample"):
        objective.training_loss(build_model(load_preset("micro-llama").config), indices)


# ---- direct preference optimization --------------------------------------------------------

PAIRS = [
    ("Capital of France?", "Paris.", "Lyon."),
    ("2+2?", "4", "Five, I believe."),
    ("Sky color?", "Blue.", "Green."),
    ("Opposite of hot?", "Cold.", "Warm."),
]


def preference_sets() -> tuple[SequenceSet, SequenceSet]:
    tokenized = [
        tokenize_preference(
            byte_chat_tokenizer(),
            PreferenceExample(
                prompt=({"role": "user", "content": q},), chosen=c, rejected=r, line=1
            ),
            max_tokens=64,
        )
        for q, c, r in PAIRS
    ]
    chosen = SequenceSet.from_sequences([c for c, _ in tokenized])
    rejected = SequenceSet.from_sequences([r for _, r in tokenized])
    return chosen, rejected


CHOSEN, REJECTED = preference_sets()


def lora(model: torch.nn.Module, dropout: float = 0.0) -> torch.nn.Module:
    return apply_adapter(model, AdapterConfig(rank=4, dropout=dropout), seed=0)


def train(model: torch.nn.Module, objective: Objective, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = sample_order(objective.num_samples, steps * 4, seed=0)
    model.train()
    losses = []
    for step in range(steps):
        loss, _ = objective.training_loss(model, order[step * 4 : (step + 1) * 4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_sequence_logps_sum_the_reply_tokens_of_each_padded_sequence() -> None:
    model = micro().eval()
    batch = CHOSEN.batch([0, 1, 2], pad_id=0)
    with torch.no_grad():
        logps = sequence_logps(model, batch)
    assert logps.shape == (3,)
    for row in range(3):
        ids, mask = parts(CHOSEN, row)
        expected = token_logps(model, ids)[torch.from_numpy(mask[1:])].sum()
        assert float(logps[row]) == pytest.approx(float(expected), abs=1e-4)
        assert float(logps[row]) < 0


def test_fresh_lora_policy_equals_its_reference() -> None:
    model = lora(micro())
    objective = DirectPreference(CHOSEN, REJECTED, beta=0.1)
    metrics = objective.evaluate(model, batch_size=3, max_examples=10)
    assert metrics["reward_margin"] == 0.0
    assert metrics["reward_accuracy"] == 0.5
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["examples"] == 4.0
    model.train()
    indices = [1, 3]
    loss, tokens = objective.training_loss(model, indices)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert tokens == sum(
        int(s.offsets[i + 1] - s.offsets[i]) for s in (CHOSEN, REJECTED) for i in indices
    )
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and bool(g.abs().max() > 0) for n, g in grads.items() if "lora_B" in n)


def test_reference_pass_leaves_the_training_mode_as_it_was() -> None:
    model = lora(micro(), dropout=0.5)
    objective = DirectPreference(CHOSEN, REJECTED, beta=0.1)
    model.train()
    objective.training_loss(model, [0, 1])
    assert model.training
    model.eval()
    objective.training_loss(model, [0, 1])
    assert not model.training


def test_dpo_with_lora_learns_to_prefer_the_chosen_replies() -> None:
    model = lora(micro())
    objective = DirectPreference(CHOSEN, REJECTED, beta=0.1)
    losses = train(model, objective, steps=8, lr=1e-2)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    metrics = objective.evaluate(model, batch_size=4, max_examples=4)
    assert metrics["reward_accuracy"] > 0.5
    assert metrics["reward_margin"] > 0.0
    assert metrics["loss"] < math.log(2)
    # Margins are beta times the log-ratios, and do not depend on batching.
    doubled = DirectPreference(CHOSEN, REJECTED, beta=0.2).evaluate(model, 1, 4)
    assert doubled["reward_margin"] == pytest.approx(2 * metrics["reward_margin"], rel=1e-4)
    assert doubled["reward_accuracy"] == metrics["reward_accuracy"]


def test_full_fine_tuning_dpo_learns_against_a_frozen_reference() -> None:
    config = load_preset("micro-llama", chat=True).config
    model = apply_adapter(build_model(config, seed=4), AdapterConfig(kind="full"))
    reference = build_model(config, seed=4).eval().requires_grad_(False)
    frozen = {n: p.clone() for n, p in reference.named_parameters()}
    objective = DirectPreference(CHOSEN, REJECTED, beta=0.1, reference=reference)
    start = objective.evaluate(model, batch_size=4, max_examples=4)
    assert (start["reward_margin"], start["reward_accuracy"]) == (0.0, 0.5)
    train(model, objective, steps=6, lr=1e-3)
    metrics = objective.evaluate(model, batch_size=4, max_examples=4)
    assert metrics["reward_accuracy"] > 0.5
    assert metrics["reward_margin"] > 0.0
    assert all(torch.equal(p, frozen[n]) for n, p in reference.named_parameters())


def test_full_fine_tuning_dpo_without_a_reference_is_refused() -> None:
    model = apply_adapter(micro(), AdapterConfig(kind="full"))
    objective = DirectPreference(CHOSEN, REJECTED, beta=0.1)
    with pytest.raises(ConfigError, match="needs a LoRA adapter"):
        objective.training_loss(model, [0, 1])
    with pytest.raises(ConfigError, match="needs a LoRA adapter"):
        objective.evaluate(model, batch_size=2, max_examples=2)


def test_unpaired_replies_are_refused() -> None:
    with pytest.raises(ConfigError, match="pair up"):
        DirectPreference(CHOSEN, REJECTED.subset([0, 1]), beta=0.1)


# ---- build_objective -----------------------------------------------------------------------


def test_build_objective_dispatches_on_the_method() -> None:
    lm = build_objective("lm", encode_shard(TOKENS), vocab_size=256, seq_len=16)
    assert isinstance(lm, LanguageModeling)
    assert np.array_equal(lm.tokens, TOKENS) and lm.seq_len == 16

    sft = build_objective(
        "sft", encode_examples({"sequences": SEQUENCES}), vocab_size=VOCAB, seq_len=16
    )
    assert isinstance(sft, SupervisedFineTuning)
    assert np.array_equal(sft.sequences.ids, SEQUENCES.ids)

    reference = micro()
    dpo = build_objective(
        "dpo",
        encode_examples({"chosen": CHOSEN, "rejected": REJECTED}),
        vocab_size=VOCAB,
        seq_len=16,
        dpo_beta=0.25,
        reference=reference,
    )
    assert isinstance(dpo, DirectPreference)
    assert dpo.beta == 0.25 and dpo.reference is reference
    assert np.array_equal(dpo.rejected.offsets, REJECTED.offsets)
    assert build_objective(
        "dpo",
        encode_examples({"chosen": CHOSEN, "rejected": REJECTED}),
        vocab_size=VOCAB,
        seq_len=8,
    ).beta == pytest.approx(0.1)


def test_build_objective_checks_the_shard_against_the_method_and_vocabulary() -> None:
    sft_shard = encode_examples({"sequences": SEQUENCES})
    with pytest.raises(ConfigError, match="expected"):
        build_objective("dpo", sft_shard, vocab_size=VOCAB, seq_len=16)
    with pytest.raises(ConfigError, match="outside"):
        build_objective("sft", sft_shard, vocab_size=256, seq_len=16)
    with pytest.raises(ConfigError, match="no example shards for method 'rl'"):
        build_objective("rl", sft_shard, vocab_size=VOCAB, seq_len=16)
