"""The DiLoCo inner loop and held-out evaluation, on the micro-llama preset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from swarm.models import (
    InnerLoopConfig,
    InnerLoopInterrupted,
    LanguageModeling,
    build_model,
    encode_text,
    preset_config,
    run_inner_loop,
    sample_order,
    trainable_state,
)
from swarm.protocol.errors import ConfigError

TOKENS = encode_text("the quick brown fox jumps over the lazy dog. " * 40)
SEQ_LEN = 32
OBJECTIVE = LanguageModeling(TOKENS, SEQ_LEN)
CONFIG = InnerLoopConfig(steps=12, batch_size=4, learning_rate=1e-2, warmup_steps=2, seed=7)


def evaluate_loss(
    model: torch.nn.Module, tokens: np.ndarray, batch_size: int = 16, max_examples: int = 128
) -> float:
    return LanguageModeling(tokens, SEQ_LEN).evaluate(model, batch_size, max_examples)["loss"]


def _model(seed: int = 0) -> PreTrainedModel:
    return build_model(preset_config("micro-llama"), seed=seed)


def test_inner_loop_reduces_the_loss() -> None:
    result = run_inner_loop(_model(), OBJECTIVE, CONFIG)
    assert len(result.losses) == CONFIG.steps
    assert all(np.isfinite(result.losses))
    assert np.mean(result.losses[-3:]) < result.losses[0] - 0.5


def test_result_accounts_for_tokens_and_time() -> None:
    result = run_inner_loop(_model(), OBJECTIVE, CONFIG)
    assert result.tokens == CONFIG.steps * CONFIG.batch_size * SEQ_LEN
    assert result.compute_s > 0.0


def test_pseudo_gradient_is_start_minus_end() -> None:
    model = _model()
    start = trainable_state(model)
    result = run_inner_loop(model, OBJECTIVE, CONFIG)
    end = trainable_state(model)
    assert result.pseudo_gradient.keys() == start.keys()
    for name, delta in result.pseudo_gradient.items():
        assert delta.dtype == torch.float32
        torch.testing.assert_close(start[name] - delta, end[name], rtol=0, atol=1e-6)
    assert any(bool(delta.abs().max() > 0) for delta in result.pseudo_gradient.values())


def test_applying_the_pseudo_gradient_reproduces_the_trained_model() -> None:
    trained = _model()
    result = run_inner_loop(trained, OBJECTIVE, CONFIG)
    fresh = _model()
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.sub_(result.pseudo_gradient[name])
    batch = torch.from_numpy(TOKENS[:64].astype(np.int64)).reshape(2, 32)
    torch.testing.assert_close(
        fresh(input_ids=batch).logits, trained(input_ids=batch).logits, rtol=1e-4, atol=1e-4
    )


def test_same_seed_is_bit_exact() -> None:
    first = run_inner_loop(_model(), OBJECTIVE, CONFIG)
    second = run_inner_loop(_model(), OBJECTIVE, CONFIG)
    assert first.losses == second.losses
    for name, delta in first.pseudo_gradient.items():
        assert torch.equal(delta, second.pseudo_gradient[name]), name


def test_another_task_seed_samples_other_windows() -> None:
    first = run_inner_loop(_model(), OBJECTIVE, CONFIG)
    other = InnerLoopConfig(**{**_fields(CONFIG), "seed": CONFIG.seed + 1})
    second = run_inner_loop(_model(), OBJECTIVE, other)
    assert first.losses != second.losses


def _fields(config: InnerLoopConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_on_step_sees_every_step_and_its_loss() -> None:
    seen: list[tuple[int, float]] = []
    result = run_inner_loop(
        _model(), OBJECTIVE, CONFIG, on_step=lambda step, loss: seen.append((step, loss))
    )
    assert seen == list(enumerate(result.losses))


def test_on_step_returning_false_interrupts_the_loop() -> None:
    calls: list[int] = []

    def stop_after_three(step: int, loss: float) -> bool:
        calls.append(step)
        return step < 2

    with pytest.raises(InnerLoopInterrupted, match="after 3 of 12 steps"):
        run_inner_loop(_model(), OBJECTIVE, CONFIG, on_step=stop_after_three)
    assert calls == [0, 1, 2]


def test_shard_shorter_than_a_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="fewer than seq_len"):
        LanguageModeling(TOKENS[:SEQ_LEN], SEQ_LEN)


def test_clipping_can_be_disabled() -> None:
    config = InnerLoopConfig(**{**_fields(CONFIG), "max_grad_norm": 0.0, "steps": 2})
    clipped = InnerLoopConfig(**{**_fields(CONFIG), "max_grad_norm": 1e-3, "steps": 2})
    free = run_inner_loop(_model(), OBJECTIVE, config)
    tight = run_inner_loop(_model(), OBJECTIVE, clipped)
    assert free.losses[0] == tight.losses[0]
    assert free.losses[1] != tight.losses[1]


BAD_CONFIGS: list[tuple[str, Any]] = [
    ("steps", 0),
    ("steps", 100_001),
    ("batch_size", 0),
    ("batch_size", 4097),
    ("learning_rate", 0.0),
    ("learning_rate", 1.5),
    ("learning_rate", float("nan")),
    ("weight_decay", -0.1),
    ("weight_decay", 1.5),
    ("max_grad_norm", -1.0),
    ("max_grad_norm", float("nan")),
    ("warmup_steps", -1),
    ("warmup_steps", 13),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIGS, ids=str)
def test_inner_loop_config_refuses_out_of_range_values_by_name(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be in"):
        InnerLoopConfig(**{**_fields(CONFIG), field: value})


def test_inner_loop_config_accepts_warmup_over_the_whole_loop() -> None:
    assert InnerLoopConfig(**{**_fields(CONFIG), "warmup_steps": 12}).warmup_steps == 12


def test_evaluation_is_deterministic_and_does_not_train() -> None:
    model = _model()
    before = trainable_state(model)
    first = evaluate_loss(model, TOKENS, batch_size=4, max_examples=8)
    second = evaluate_loss(model, TOKENS, batch_size=4, max_examples=8)
    assert first == second
    assert 4.0 < first < 7.0
    after = trainable_state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_evaluation_sees_training_progress() -> None:
    model = _model()
    before = evaluate_loss(model, TOKENS)
    run_inner_loop(model, OBJECTIVE, CONFIG)
    assert evaluate_loss(model, TOKENS) < before - 0.5


def test_evaluation_needs_one_window_plus_one_token() -> None:
    model = _model()
    assert np.isfinite(evaluate_loss(model, TOKENS[:33]))
    with pytest.raises(ConfigError, match="fewer than seq_len"):
        evaluate_loss(model, TOKENS[:32])
    with pytest.raises(ConfigError):
        evaluate_loss(model, TOKENS[:0])


def test_the_loop_trains_on_exactly_the_samples_it_is_given() -> None:
    samples = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]  # 3 steps of 4, the last one short
    config = InnerLoopConfig(steps=3, batch_size=4, learning_rate=1e-2, seed=7)
    result = run_inner_loop(_model(), OBJECTIVE, config, samples=samples)
    assert len(result.losses) == 3
    assert result.tokens == len(samples) * SEQ_LEN
    # The same samples in another order are another task.
    reordered = run_inner_loop(_model(), OBJECTIVE, config, samples=samples[::-1])
    assert reordered.losses != result.losses


@pytest.mark.parametrize("count", [0, 8, 13])
def test_samples_that_do_not_make_the_asked_steps_are_refused(count: int) -> None:
    config = InnerLoopConfig(steps=3, batch_size=4, learning_rate=1e-2)
    with pytest.raises(ConfigError, match="not the 3 steps"):
        run_inner_loop(_model(), OBJECTIVE, config, samples=list(range(count)))


def test_sample_order_visits_every_sample_once_per_pass() -> None:
    order = sample_order(7, 17, seed=3)
    assert len(order) == 17
    assert sorted(order[:7]) == list(range(7)) and sorted(order[7:14]) == list(range(7))
    assert order == sample_order(7, 17, seed=3)
    assert order != sample_order(7, 17, seed=4)


def test_a_kept_optimizer_state_continues_one_run_exactly() -> None:
    # Two tasks of 6 steps, the second resuming the first's AdamW state (and so no warm-up),
    # train exactly like one task of 12 steps: DiLoCo's per-worker inner optimizer.
    samples = sample_order(OBJECTIVE.num_samples, 12 * 4, seed=3)
    whole = _model()
    run_inner_loop(whole, OBJECTIVE, CONFIG, samples=samples)
    halves = _model()
    half = InnerLoopConfig(steps=6, batch_size=4, learning_rate=1e-2, warmup_steps=2, seed=7)
    first = run_inner_loop(halves, OBJECTIVE, half, samples=samples[:24])
    run_inner_loop(
        halves, OBJECTIVE, half, samples=samples[24:], optimizer_state=first.optimizer_state
    )
    for name, value in trainable_state(whole).items():
        torch.testing.assert_close(trainable_state(halves)[name], value, rtol=0, atol=0)
    # Without the state the second half restarts AdamW (and its warm-up): another model.
    fresh = _model()
    run_inner_loop(fresh, OBJECTIVE, half, samples=samples[:24])
    run_inner_loop(fresh, OBJECTIVE, half, samples=samples[24:])
    assert any(
        not torch.equal(trainable_state(fresh)[n], v) for n, v in trainable_state(whole).items()
    )


def test_an_optimizer_state_for_other_parameters_is_refused() -> None:
    state = run_inner_loop(_model(), OBJECTIVE, CONFIG).optimizer_state
    other = build_model({**preset_config("micro-llama"), "intermediate_size": 48}, seed=0)
    with pytest.raises(ValueError, match="optimizer state of parameter"):
        run_inner_loop(other, OBJECTIVE, CONFIG, optimizer_state=state)


def test_an_optimizer_state_for_another_parameter_count_does_not_fit() -> None:
    from swarm.models import optimizer_state_mismatch

    state = run_inner_loop(_model(), OBJECTIVE, CONFIG).optimizer_state
    assert optimizer_state_mismatch(state, _model()) == ""
    deeper = build_model({**preset_config("micro-llama"), "num_hidden_layers": 3}, seed=0)
    assert "the model trains" in optimizer_state_mismatch(state, deeper)
