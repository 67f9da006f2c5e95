"""Chat tokenization: which tokens of a conversation or preference pair the loss trains on."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from swarm.models.chat import (
    CHATML_TEMPLATE,
    TokenizedSequence,
    byte_chat_tokenizer,
    ensure_chat_template,
    generate_reply,
    render_ids,
    tokenize_chat,
    tokenize_preference,
)
from swarm.models.datasets import ChatExample, Message, PreferenceExample
from swarm.models.sources import load_preset
from swarm.protocol.errors import ConfigError

TOKENIZER = byte_chat_tokenizer()
END = "<|im_end|>\n"


def msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def chat(
    *messages: Message, train_on: tuple[bool, ...] | None = None, line: int = 1
) -> ChatExample:
    if train_on is None:
        train_on = tuple(m["role"] == "assistant" for m in messages)
    return ChatExample(messages=messages, line=line, train_on=train_on)


def decode(ids: np.ndarray) -> str:
    return str(TOKENIZER.decode(ids.tolist()))


def render_ids_text(messages: tuple[Message, ...]) -> str:
    return decode(np.array(render_ids(TOKENIZER, messages)))


def masked_runs(sequence: TokenizedSequence) -> list[str]:
    """The text of each contiguous run of trained tokens, in order."""
    runs: list[str] = []
    start = None
    for i, bit in enumerate([*sequence.mask.tolist(), 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append(decode(sequence.ids[start:i]))
            start = None
    return runs


def with_template(template: str) -> PreTrainedTokenizerFast:
    """A copy of the byte tokenizer with another chat template (the cached one stays intact)."""
    tokenizer = copy.deepcopy(TOKENIZER)
    tokenizer.chat_template = template
    return tokenizer


SINGLE = chat(msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"), line=3)
MULTI = (
    msg("user", "Hi"),
    msg("assistant", "Hello!"),
    msg("user", "Bye"),
    msg("assistant", "Ciao"),
)


# ---- the byte tokenizer ----------------------------------------------------------------------


def test_byte_tokenizer_maps_each_byte_to_its_value_plus_three_specials() -> None:
    assert len(TOKENIZER) == 259
    text = "Aé\n ~\x00"
    assert TOKENIZER(text, add_special_tokens=False)["input_ids"] == list(text.encode("utf-8"))
    specials = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]
    assert TOKENIZER.convert_tokens_to_ids(specials) == [256, 257, 258]
    assert (TOKENIZER.eos_token_id, TOKENIZER.pad_token_id) == (256, 257)
    assert TOKENIZER("<|im_start|>x<|im_end|>")["input_ids"] == [258, ord("x"), 256]
    assert decode(np.array(list(text.encode("utf-8")))) == text


def test_byte_tokenizer_is_built_once() -> None:
    assert byte_chat_tokenizer() is TOKENIZER


def test_render_ids_follow_chatml() -> None:
    ids = render_ids(TOKENIZER, [msg("user", "Hi")], add_generation_prompt=True)
    assert decode(np.array(ids)) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == TOKENIZER.convert_tokens_to_ids("<|im_start|>")
    assert render_ids(TOKENIZER, [msg("user", "Hi")]) == ids[: -len("assistant\n") - 1]


# ---- conversations -------------------------------------------------------------------------


def test_mask_covers_exactly_the_reply_and_its_end_of_turn_marker() -> None:
    sequence = tokenize_chat(TOKENIZER, SINGLE, max_tokens=512)
    assert sequence.ids.dtype == np.int32 and sequence.mask.dtype == np.uint8
    assert sequence.ids.shape == sequence.mask.shape
    assert masked_runs(sequence) == ["Hello!" + END]
    assert not sequence.truncated


def test_system_and_user_tokens_are_not_trained_on() -> None:
    sequence = tokenize_chat(TOKENIZER, SINGLE, max_tokens=512)
    prompt = render_ids(TOKENIZER, SINGLE.messages[:2], add_generation_prompt=True)
    assert sequence.ids[: len(prompt)].tolist() == prompt
    assert not sequence.mask[: len(prompt)].any()
    assert sequence.mask[len(prompt) :].all()
    assert decode(sequence.ids) == render_ids_text(SINGLE.messages)


def test_every_trained_reply_of_a_multi_turn_conversation_is_masked() -> None:
    sequence = tokenize_chat(TOKENIZER, chat(*MULTI), max_tokens=512)
    assert decode(sequence.ids) == render_ids_text(MULTI)
    assert masked_runs(sequence) == ["Hello!" + END, "Ciao" + END]
    assert int(sequence.mask.sum()) == len("Hello!") + len("Ciao") + 2 * 2  # + <|im_end|>, \n


def test_assistant_turns_not_trained_on_stay_unmasked() -> None:
    example = chat(*MULTI, train_on=(False, False, False, True))
    sequence = tokenize_chat(TOKENIZER, example, max_tokens=512)
    assert decode(sequence.ids) == render_ids_text(MULTI)
    assert masked_runs(sequence) == ["Ciao" + END]
    first = chat(*MULTI, train_on=(False, True, False, False))
    assert masked_runs(tokenize_chat(TOKENIZER, first, max_tokens=512)) == ["Hello!" + END]


def test_long_conversation_is_cut_to_a_prefix_and_marked_truncated() -> None:
    full = tokenize_chat(TOKENIZER, SINGLE, max_tokens=512)
    exact = tokenize_chat(TOKENIZER, SINGLE, max_tokens=len(full.ids))
    assert not exact.truncated
    assert np.array_equal(exact.ids, full.ids)
    cut = tokenize_chat(TOKENIZER, SINGLE, max_tokens=len(full.ids) - 4)  # drops "o!<|im_end|>\n"
    assert cut.truncated
    assert np.array_equal(cut.ids, full.ids[:-4])
    assert np.array_equal(cut.mask, full.mask[:-4])
    assert masked_runs(cut) == ["Hell"]


def test_example_whose_trained_tokens_all_fall_past_the_cut_is_refused_by_line() -> None:
    full = tokenize_chat(TOKENIZER, SINGLE, max_tokens=512)
    first_trained = int(np.argmax(full.mask))
    assert tokenize_chat(TOKENIZER, SINGLE, max_tokens=first_trained + 1).mask.sum() == 1
    message = rf"^line 3: no reply token .* seq_len of {first_trained} tokens"
    with pytest.raises(ConfigError, match=message):
        tokenize_chat(TOKENIZER, SINGLE, max_tokens=first_trained)
    untrained_tail = chat(*MULTI, train_on=(False, True, False, False), line=9)
    reply_end = len(render_ids(TOKENIZER, MULTI[:2]))
    # The second reply is untrained, so a cut after the first trained reply still has tokens...
    assert tokenize_chat(TOKENIZER, untrained_tail, max_tokens=reply_end).mask.sum() > 0
    # ...but a cut before it leaves none.
    with pytest.raises(ConfigError, match=r"^line 9:"):
        tokenize_chat(TOKENIZER, untrained_tail, max_tokens=reply_end - len("Hello!" + END))


# ---- preference pairs ----------------------------------------------------------------------


PAIR = PreferenceExample(
    prompt=(msg("system", "Answer."), msg("user", "Capital of France?")),
    chosen="Paris.",
    rejected="Lyon, I think.",
    line=5,
)


def test_preference_pair_shares_the_prompt_and_masks_only_each_reply() -> None:
    chosen, rejected = tokenize_preference(TOKENIZER, PAIR, max_tokens=512)
    prompt = render_ids(TOKENIZER, PAIR.prompt, add_generation_prompt=True)
    for sequence, reply in ((chosen, PAIR.chosen), (rejected, PAIR.rejected)):
        assert sequence.ids[: len(prompt)].tolist() == prompt
        assert not sequence.mask[: len(prompt)].any()
        assert masked_runs(sequence) == [reply + END]
        assert len(sequence.ids) == len(prompt) + len(reply) + 2
        assert not sequence.truncated


def test_preference_pair_is_cut_like_a_conversation() -> None:
    chosen, rejected = tokenize_preference(TOKENIZER, PAIR, max_tokens=512)
    limit = len(chosen.ids) - 1
    cut_chosen, cut_rejected = tokenize_preference(TOKENIZER, PAIR, max_tokens=limit)
    assert cut_chosen.truncated and cut_rejected.truncated
    assert np.array_equal(cut_chosen.ids, chosen.ids[:limit])
    assert np.array_equal(cut_rejected.ids, rejected.ids[:limit])
    prompt_len = len(render_ids(TOKENIZER, PAIR.prompt, add_generation_prompt=True))
    with pytest.raises(ConfigError, match=r"^line 5: no reply token"):
        tokenize_preference(TOKENIZER, PAIR, max_tokens=prompt_len)


# ---- templates that cannot be masked -------------------------------------------------------

# The assistant header of a rendered reply differs from the generation prompt.
RENAMING_TEMPLATE = CHATML_TEMPLATE.replace("message['role']", "message['role'][:3]")
# Renders the number of messages first, so no rendering is a prefix of a longer one.
COUNTING_TEMPLATE = "{{ messages | length }}" + CHATML_TEMPLATE
# Closes only the final assistant turn: each reply continues its prompt, but an earlier turn
# renders differently once later ones follow.
LAST_TURN_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% if loop.last and m['role'] == 'assistant' %}{{ '<|im_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [RENAMING_TEMPLATE, COUNTING_TEMPLATE])
def test_template_whose_reply_does_not_continue_its_prompt_is_refused(template: str) -> None:
    tokenizer = with_template(template)
    with pytest.raises(ConfigError, match=r"^line 3: .* does not render a reply as a continuation"):
        tokenize_chat(tokenizer, SINGLE, max_tokens=512)
    with pytest.raises(ConfigError, match=r"^line 5: "):
        tokenize_preference(tokenizer, PAIR, max_tokens=512)
    assert TOKENIZER.chat_template == CHATML_TEMPLATE


def test_template_that_rerenders_earlier_turns_is_refused() -> None:
    tokenizer = with_template(LAST_TURN_TEMPLATE)
    # One reply is fine: it continues its prompt.
    single = tokenize_chat(tokenizer, chat(*MULTI[:2]), max_tokens=512)
    assert masked_runs(single) == ["Hello!<|im_end|>"]
    with pytest.raises(ConfigError, match=r"^line 4: .* renders earlier turns differently"):
        tokenize_chat(tokenizer, chat(*MULTI, line=4), max_tokens=512)


def test_template_that_drops_the_reply_is_refused() -> None:
    tokenizer = with_template(
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}"
        "{% endfor %}"
    )
    with pytest.raises(ConfigError, match="continuation"):
        tokenize_chat(tokenizer, SINGLE, max_tokens=512)


# ---- ensure_chat_template ------------------------------------------------------------------


def test_tokenizer_without_template_or_pad_gets_chatml_and_pads_with_eos() -> None:
    tokenizer = copy.deepcopy(TOKENIZER)
    tokenizer.chat_template = None
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 256
    assert render_ids(tokenizer, SINGLE.messages) == render_ids(TOKENIZER, SINGLE.messages)


def test_existing_template_and_pad_token_are_kept() -> None:
    tokenizer = with_template(COUNTING_TEMPLATE)
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == COUNTING_TEMPLATE
    assert tokenizer.pad_token_id == 257


# ---- generation ----------------------------------------------------------------------------


def greedy_by_hand(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
            if ids[-1] == TOKENIZER.eos_token_id:
                break
    return ids[len(prompt) :]


def test_generate_reply_is_the_greedy_continuation_of_the_prompt() -> None:
    model = load_preset("micro-llama", seed=3, chat=True).model
    messages = [msg("user", "Hi")]
    prompt = render_ids(TOKENIZER, messages, add_generation_prompt=True)
    expected = greedy_by_hand(model, prompt, max_new_tokens=6)
    assert len(expected) <= 6
    reply = generate_reply(model, TOKENIZER, messages, max_new_tokens=6)
    assert reply == TOKENIZER.decode(expected, skip_special_tokens=True).strip()
    assert not model.training


def test_a_template_that_refuses_the_conversation_is_a_config_error_naming_the_line() -> None:
    refuses_system = with_template(
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(ConfigError, match=r"^line 3: .*System role not supported"):
        tokenize_chat(refuses_system, SINGLE, max_tokens=512)


def test_a_long_conversation_is_cut_at_max_tokens() -> None:
    many = chat(
        msg("user", "Hi"),
        *[m for _ in range(50) for m in (msg("assistant", "Hello! " * 20), msg("user", "More"))],
        msg("assistant", "Bye"),
    )
    sequence = tokenize_chat(TOKENIZER, many, max_tokens=64)
    assert len(sequence.ids) == 64 and sequence.truncated
