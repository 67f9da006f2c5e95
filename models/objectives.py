"""What a task optimizes and measures: language modelling, SFT and DPO.

- `LanguageModeling`: next-token loss on windows of a token stream (the text jobs).
- `SupervisedFineTuning`: next-token loss on the assistant tokens of conversations only;
  evaluated as held-out loss and token accuracy.
- `DirectPreference`: DPO (Rafailov et al. 2023). The implicit reward of a reply is
  beta * (log pi(reply | prompt) - log pi_ref(reply | prompt)); the loss is
  -log sigmoid(reward(chosen) - reward(rejected)). The reference policy is the model with its
  LoRA adapters disabled, or a frozen copy of the base for full fine-tuning. Evaluated as
  reward accuracy (how often the chosen reply earns the higher reward; a tie counts one half,
  so an untrained policy, which equals its reference, scores exactly 50%) and reward margin.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from swarm.models.examples import Batch, SequenceSet, decode_examples
from swarm.models.shards import decode_shard
from swarm.protocol.errors import ConfigError

METHODS = ("lm", "sft", "dpo")


class Objective(abc.ABC):
    """A loss to train on and the held-out metrics to report.

    Training data is a numbered list of samples (windows of text, conversations, preference
    pairs); a train task names the samples it consumes, which is how the coordinator accounts
    for every sample exactly once per epoch.
    """

    @property
    @abc.abstractmethod
    def num_samples(self) -> int:
        """How many samples the training data holds (indices are 0 to num_samples - 1)."""

    @abc.abstractmethod
    def training_loss(
        self, model: torch.nn.Module, indices: Sequence[int]
    ) -> tuple[torch.Tensor, int]:
        """The loss of the batch made of the samples at `indices`, and its token count."""

    @abc.abstractmethod
    def evaluate(
        self, model: torch.nn.Module, batch_size: int, max_examples: int
    ) -> dict[str, float]:
        """Held-out metrics over (up to) the first `max_examples` examples; always has `loss`."""


class LanguageModeling(Objective):
    """Sample i is the window of `seq_len` tokens starting at token i * seq_len."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if len(tokens) < seq_len + 1:
            raise ConfigError(f"shard has {len(tokens)} tokens, fewer than seq_len + 1")
        self.tokens = tokens
        self.seq_len = seq_len

    @property
    def num_samples(self) -> int:
        return len(self.tokens) // self.seq_len

    def training_loss(
        self, model: torch.nn.Module, indices: Sequence[int]
    ) -> tuple[torch.Tensor, int]:
        _check_indices(indices, self.num_samples)
        windows = np.stack(
            [self.tokens[i * self.seq_len : (i + 1) * self.seq_len] for i in indices]
        )
        batch = torch.from_numpy(windows.astype(np.int64))
        return model(input_ids=batch, labels=batch).loss, batch.numel()

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, batch_size: int, max_examples: int
    ) -> dict[str, float]:
        """Mean next-token loss over consecutive, non-overlapping windows."""
        num_windows = min((len(self.tokens) - 1) // self.seq_len, max_examples)
        windows = torch.from_numpy(
            np.asarray(self.tokens[: num_windows * self.seq_len], dtype=np.int64).reshape(
                num_windows, self.seq_len
            )
        )
        model.eval()
        total = 0.0
        for batch in windows.split(batch_size):
            total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
        return {"loss": total / num_windows, "examples": float(num_windows)}


def _token_stats(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed next-token loss and correct predictions over the loss tokens; and their count."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits, targets = logits[:, :-1].float(), batch.input_ids[:, 1:]
    counted = batch.loss_mask[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    correct = (logits.argmax(-1) == targets) & counted
    return (losses * counted).sum(), correct.sum(), int(counted.sum())


def _check_indices(indices: Sequence[int], num_samples: int) -> None:
    if not indices:
        raise ConfigError("a batch needs at least one sample")
    bad = next((i for i in indices if not 0 <= i < num_samples), None)
    if bad is not None:
        raise ConfigError(f"sample {bad} does not exist: the data has {num_samples} samples")


def _chunks(num: int, size: int) -> Iterator[list[int]]:
    for start in range(0, num, size):
        yield list(range(start, min(num, start + size)))


class SupervisedFineTuning(Objective):
    """Sample i is conversation i."""

    def __init__(self, sequences: SequenceSet) -> None:
        self.sequences = sequences

    @property
    def num_samples(self) -> int:
        return len(self.sequences)

    def training_loss(
        self, model: torch.nn.Module, indices: Sequence[int]
    ) -> tuple[torch.Tensor, int]:
        _check_indices(indices, self.num_samples)
        batch = self.sequences.batch(list(indices), pad_id=0)
        loss = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
        return loss, batch.num_tokens

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, batch_size: int, max_examples: int
    ) -> dict[str, float]:
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        num = min(len(self.sequences), max_examples)
        for indices in _chunks(num, batch_size):
            batch_loss, batch_correct, batch_count = _token_stats(
                model, self.sequences.batch(indices, pad_id=0)
            )
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
            count += batch_count
        return {
            "loss": loss_sum / count,
            "token_accuracy": correct / count,
            "examples": float(num),
        }


def sequence_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """log p(reply tokens | everything before them), summed per sequence: [B]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits, targets = logits[:, :-1].float(), batch.input_ids[:, 1:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * batch.loss_mask[:, 1:]).sum(-1)


class DirectPreference(Objective):
    """Sample i is preference pair i (its chosen and its rejected reply)."""

    def __init__(
        self,
        chosen: SequenceSet,
        rejected: SequenceSet,
        beta: float,
        reference: torch.nn.Module | None = None,
    ) -> None:
        """`reference` is a frozen model, or None to use the trained model's adapters disabled."""
        if len(chosen) != len(rejected):
            raise ConfigError("chosen and rejected replies must pair up")
        self.chosen, self.rejected = chosen, rejected
        self.beta = beta
        self.reference = reference

    @property
    def num_samples(self) -> int:
        return len(self.chosen)

    def _reference_logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, batch)
            disable = getattr(model, "disable_adapter", None)
            if disable is None:
                raise ConfigError("DPO without a reference model needs a LoRA adapter to disable")
            was_training = model.training
            model.eval()  # no adapter dropout on the reference pass
            with disable():
                logps = sequence_logps(model, batch)
            model.train(was_training)
            return logps

    def _margins(self, model: torch.nn.Module, indices: list[int]) -> torch.Tensor:
        """beta * (policy - reference log-ratio of chosen minus that of rejected), per pair."""
        chosen = self.chosen.batch(indices, pad_id=0)
        rejected = self.rejected.batch(indices, pad_id=0)
        chosen_ratio = sequence_logps(model, chosen) - self._reference_logps(model, chosen)
        rejected_ratio = sequence_logps(model, rejected) - self._reference_logps(model, rejected)
        return self.beta * (chosen_ratio - rejected_ratio)

    def training_loss(
        self, model: torch.nn.Module, indices: Sequence[int]
    ) -> tuple[torch.Tensor, int]:
        _check_indices(indices, self.num_samples)
        indices = list(indices)
        margins = self._margins(model, indices)
        tokens = sum(int(self.chosen.offsets[i + 1] - self.chosen.offsets[i]) for i in indices)
        tokens += sum(int(self.rejected.offsets[i + 1] - self.rejected.offsets[i]) for i in indices)
        return -F.logsigmoid(margins).mean(), tokens

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, batch_size: int, max_examples: int
    ) -> dict[str, float]:
        model.eval()
        num = min(len(self.chosen), max_examples)
        margins = torch.cat([self._margins(model, idx) for idx in _chunks(num, batch_size)])
        wins = (margins > 0).float() + 0.5 * (margins == 0).float()
        return {
            "loss": float(-F.logsigmoid(margins).mean()),
            "reward_accuracy": float(wins.mean()),
            "reward_margin": float(margins.mean()),
            "examples": float(num),
        }


def build_objective(
    method: str,
    shard: bytes,
    *,
    vocab_size: int,
    seq_len: int,
    dpo_beta: float = 0.1,
    reference: torch.nn.Module | None = None,
) -> Objective:
    """The objective of `method` over a data shard as the coordinator encoded it."""
    if method == "lm":
        return LanguageModeling(decode_shard(shard, vocab_size), seq_len)
    sets = decode_examples(shard, method, vocab_size)
    if method == "sft":
        return SupervisedFineTuning(sets["sequences"])
    return DirectPreference(sets["chosen"], sets["rejected"], dpo_beta, reference)
