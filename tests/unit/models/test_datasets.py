"""Fine-tuning datasets in JSONL: accepted formats, and errors that name the line and field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swarm.models import datasets
from swarm.models.datasets import (
    MAX_CONTENT_BYTES,
    MAX_LINE_BYTES,
    ChatExample,
    DatasetKind,
    PreferenceExample,
    detect_format,
    parse_dataset,
)
from swarm.protocol.errors import ConfigError


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def problems(data: bytes, kind: DatasetKind, **limits: int) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_dataset(data, kind, **limits)
    return str(caught.value)


CHAT = {"messages": [msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!")]}
PREFERENCE = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}


# ---- accepted formats ----------------------------------------------------------------------


def test_openai_chat_becomes_a_chat_example_training_on_assistant_messages() -> None:
    record = {
        "messages": [
            msg("system", "Be brief."),
            msg("user", "Hi", name="ann"),
            msg("assistant", "Hello!", weight=0),
            msg("user", "Bye"),
            msg("assistant", "Goodbye!", weight=1),
        ],
        "metadata": {"source": "export"},
    }
    [example] = parse_dataset(jsonl(record), "chat")
    assert example == ChatExample(
        messages=(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye!"},
        ),
        line=1,
        train_on=(False, False, False, False, True),
    )


def test_assistant_messages_are_trained_on_by_default() -> None:
    record = {"messages": [msg("user", "a"), msg("assistant", "b"), msg("user", "c")]}
    record["messages"].append(msg("assistant", "d"))
    [example] = parse_dataset(jsonl(record), "chat")
    assert example.train_on == (False, True, False, True)


def test_string_prompt_and_completion_become_a_user_and_an_assistant_message() -> None:
    [example] = parse_dataset(jsonl({"prompt": "2+2?", "completion": "4"}), "chat")
    assert example.messages == (
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    )
    assert example.train_on == (False, True)


def test_conversational_prompt_completion_trains_only_on_the_completion() -> None:
    record = {
        "prompt": [
            msg("system", "s"),
            msg("user", "u1"),
            msg("assistant", "a1"),
            msg("user", "u2"),
        ],
        "completion": [msg("assistant", "a2")],
    }
    [example] = parse_dataset(jsonl(record), "chat")
    assert [m["role"] for m in example.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert example.messages[-1]["content"] == "a2"
    assert example.train_on == (False, False, False, False, True)


def test_openai_preference_becomes_a_preference_example() -> None:
    record = {
        "input": {"messages": [msg("system", "s"), msg("user", "Pick one")], "tools": []},
        "preferred_output": [msg("assistant", "A")],
        "non_preferred_output": [msg("assistant", "B")],
    }
    [example] = parse_dataset(jsonl(record), "preference")
    assert example == PreferenceExample(
        prompt=({"role": "system", "content": "s"}, {"role": "user", "content": "Pick one"}),
        chosen="A",
        rejected="B",
        line=1,
    )


def test_trl_explicit_prompt_with_strings() -> None:
    [example] = parse_dataset(jsonl(PREFERENCE), "preference")
    assert example == PreferenceExample(
        prompt=({"role": "user", "content": "Capital of France?"},),
        chosen="Paris.",
        rejected="Lyon.",
        line=1,
    )


def test_trl_explicit_prompt_with_messages() -> None:
    record = {
        "prompt": [msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2")],
        "chosen": [msg("assistant", "good")],
        "rejected": [msg("assistant", "bad")],
    }
    [example] = parse_dataset(jsonl(record), "preference")
    assert [m["content"] for m in example.prompt] == ["q1", "a1", "q2"]
    assert (example.chosen, example.rejected) == ("good", "bad")


def test_trl_implicit_prompt_is_the_shared_prefix() -> None:
    prefix = [msg("system", "s"), msg("user", "q")]
    record = {
        "chosen": [*prefix, msg("assistant", "good")],
        "rejected": [*prefix, msg("assistant", "bad")],
    }
    [example] = parse_dataset(jsonl(record), "preference")
    assert example.prompt == tuple({"role": m["role"], "content": m["content"]} for m in prefix)
    assert (example.chosen, example.rejected) == ("good", "bad")


def test_lines_are_numbered_from_one_counting_blank_lines() -> None:
    data = b"\n" + jsonl(CHAT) + b"   \n\r\n" + jsonl(CHAT)
    assert [e.line for e in parse_dataset(data, "chat")] == [2, 5]


def test_crlf_line_endings_and_a_byte_order_mark_are_tolerated() -> None:
    data = b"\xef\xbb\xbf" + jsonl(CHAT, CHAT).replace(b"\n", b"\r\n")
    assert len(parse_dataset(data, "chat")) == 2


def test_a_last_line_without_newline_is_read() -> None:
    assert len(parse_dataset(jsonl(CHAT, CHAT).rstrip(b"\n"), "chat")) == 2


def test_null_tool_calls_from_api_responses_are_ignored() -> None:
    record = {"messages": [msg("user", "q"), msg("assistant", "a", tool_calls=None, refusal=None)]}
    assert parse_dataset(jsonl(record), "chat")[0].messages[1] == {
        "role": "assistant",
        "content": "a",
    }


def test_unicode_content_survives() -> None:
    record = {"messages": [msg("user", "Grüße 👋"), msg("assistant", "こんにちは")]}
    [example] = parse_dataset(json.dumps(record, ensure_ascii=False).encode(), "chat")
    assert example.messages[1]["content"] == "こんにちは"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (CHAT, "openai_chat"),
        ({"prompt": "p", "completion": "c", "id": 7}, "trl_prompt_completion"),
        (PREFERENCE, "trl_preference"),
        ({"chosen": [], "rejected": []}, "trl_implicit_preference"),
        (
            {"input": {}, "preferred_output": [], "non_preferred_output": [], "metadata": {}},
            "openai_preference",
        ),
    ],
)
def test_detect_format(record: dict[str, Any], expected: str) -> None:
    assert detect_format(record) == expected


def test_detect_format_names_the_missing_key_of_the_closest_format() -> None:
    with pytest.raises(ConfigError, match=r'prompt/completion\) but has no "completion"'):
        detect_format({"prompt": "p"})
    with pytest.raises(ConfigError, match=r'\(chosen/rejected\) but has no "rejected"'):
        detect_format({"chosen": []})


def test_detect_format_lists_the_keys_when_nothing_matches() -> None:
    with pytest.raises(ConfigError, match=r'no known format \(top-level keys: "text"\)'):
        detect_format({"text": "hello"})


# ---- errors: the file and its lines ----------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
def test_a_file_without_examples_is_refused(data: bytes) -> None:
    assert problems(data, "chat") == "the file has no examples"


def test_invalid_utf8_names_the_line() -> None:
    data = jsonl(CHAT) + b'{"messages": "\xff"}\n'
    assert "line 2: not valid UTF-8 (byte 0xff at byte 15)" in problems(data, "chat")


def test_invalid_json_names_the_line_and_the_decoders_message() -> None:
    data = jsonl(CHAT, CHAT) + b'{"messages": [}\n'
    assert "line 3: not valid JSON: Expecting value (column 15)" in problems(data, "chat")


def test_deeply_nested_json_is_refused_not_crashed_on() -> None:
    data = b"[" * 200_000 + b"]" * 200_000
    assert "line 1: not valid JSON" in problems(data, "chat")


@pytest.mark.parametrize(
    ("line", "kind"), [(b"[1, 2]", "an array"), (b'"hi"', '"hi"'), (b"3", "3")]
)
def test_a_line_that_is_not_an_object_is_refused(line: bytes, kind: str) -> None:
    assert f"line 1: expected a JSON object, got {kind}" in problems(line, "chat")


def test_a_preference_record_in_a_chat_dataset_says_what_it_looks_like() -> None:
    record = {"input": {}, "preferred_output": [], "non_preferred_output": []}
    message = problems(jsonl(CHAT, CHAT, record), "chat")
    assert (
        "line 3: this looks like a preference example (input/preferred_output); "
        'supervised fine-tuning needs {"messages": [...]}'
    ) in message


def test_a_chat_record_in_a_preference_dataset_says_what_is_needed() -> None:
    message = problems(jsonl(CHAT), "preference")
    assert (
        "line 1: this looks like a chat example (messages); preference fine-tuning (DPO)" in message
    )
    assert '"preferred_output"' in message


def test_an_unknown_record_is_refused_naming_the_line() -> None:
    assert "line 1: no known format" in problems(jsonl({"text": "x"}), "chat")


# ---- errors: messages ------------------------------------------------------------------


def chat_problem(messages: Any) -> str:
    return problems(jsonl(CHAT, {"messages": messages}), "chat")


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ("hi", 'line 2: messages: expected an array of messages, got "hi"'),
        ([], "line 2: messages: has no messages"),
        (["hi"], 'line 2: messages[0]: expected a message object, got "hi"'),
        ([{"content": "x"}], "line 2: messages[0].role: missing"),
        (
            [msg("user", "q"), msg("tool", "r")],
            'line 2: messages[1].role: expected one of "system", "user", "assistant", got "tool"',
        ),
        ([{"role": "user"}], "line 2: messages[0].content: missing"),
        ([msg("user", "  \n")], "line 2: messages[0].content: is empty"),
        (
            [msg("user", "q"), {"role": "assistant", "content": [{"type": "text"}]}],
            "line 2: messages[1].content: expected a string, got an array",
        ),
        (
            [msg("user", "q"), {"role": "assistant", "content": None}],
            "messages[1].content: expected a string, got null",
        ),
        (
            [msg("user", "q"), msg("assistant", "a", tool_calls=[{"id": "1"}])],
            "line 2: messages[1].tool_calls: tool and function calls are not supported",
        ),
        (
            [msg("user", "q"), msg("assistant", "a", function_call={"name": "f"})],
            "line 2: messages[1].function_call: tool and function calls are not supported",
        ),
    ],
)
def test_bad_messages_are_refused_naming_line_and_field(messages: Any, expected: str) -> None:
    assert expected in chat_problem(messages)


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["assistant"], 'messages[0].role: expected "user" first, got "assistant"'),
        (
            ["system", "assistant"],
            'messages[1].role: expected "user" after "system", got "assistant"',
        ),
        (
            ["user", "user", "assistant"],
            'messages[1].role: expected "assistant" after "user", got "user"',
        ),
        (
            ["user", "assistant", "user", "user"],
            'messages[3].role: expected "assistant" after "user", got "user"',
        ),
        (
            ["user", "assistant", "assistant"],
            'messages[2].role: expected "user" after "assistant", got "assistant"',
        ),
        (
            ["user", "system", "assistant"],
            'messages[1].role: "system" is only allowed as the first message',
        ),
        (["system", "system"], 'messages[1].role: "system" is only allowed as the first message'),
        (
            ["user", "assistant", "user"],
            'messages: the last message must be "assistant", got "user"',
        ),
        (["system"], 'messages: the last message must be "assistant", got "system"'),
    ],
)
def test_turn_order_is_enforced(roles: list[str], expected: str) -> None:
    assert f"line 2: {expected}" in chat_problem([msg(r, f"text {i}") for i, r in enumerate(roles)])


def test_content_over_the_limit_is_refused_in_bytes() -> None:
    big = "é" * (MAX_CONTENT_BYTES // 2 + 1)  # under the limit in characters, over it in bytes
    message = chat_problem([msg("user", "q"), msg("assistant", big)])
    assert f"line 2: messages[1].content: is {MAX_CONTENT_BYTES + 2:,} bytes" in message


def test_content_at_the_limit_is_accepted() -> None:
    record = {"messages": [msg("user", "q"), msg("assistant", "x" * MAX_CONTENT_BYTES)]}
    assert len(parse_dataset(jsonl(record), "chat")) == 1


@pytest.mark.parametrize(
    ("weight", "shown"), [(2, "2"), (0.5, "0.5"), (True, "true"), ("1", '"1"'), (None, "null")]
)
def test_weight_must_be_zero_or_one(weight: Any, shown: str) -> None:
    message = chat_problem([msg("user", "q"), msg("assistant", "a", weight=weight)])
    assert f"line 2: messages[1].weight: expected 0 or 1, got {shown}" in message


def test_weight_is_only_allowed_on_assistant_messages() -> None:
    message = chat_problem([msg("user", "q", weight=1), msg("assistant", "a")])
    assert (
        'line 2: messages[0].weight: only assistant messages have a weight, not "user" ones'
        in message
    )


def test_a_chat_example_needs_a_trained_assistant_message() -> None:
    message = chat_problem([msg("user", "q"), msg("assistant", "a", weight=0)])
    assert "line 2: messages: no assistant message is trained on (each has weight 0)" in message


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"prompt": 3, "completion": "c"},
            "prompt: expected a string or an array of messages, got 3",
        ),
        ({"prompt": "", "completion": "c"}, "prompt: is empty"),
        (
            {"prompt": "p", "completion": [msg("user", "c")]},
            'completion[0].role: expected "assistant" after "user"',
        ),
        (
            {"prompt": [msg("user", "p"), msg("assistant", "a")], "completion": "c"},
            'completion: expected "user" after "assistant", got "assistant"',
        ),
        (
            {"prompt": "p", "completion": [msg("assistant", "c", weight=0)]},
            "completion: no assistant message is trained on",
        ),
    ],
)
def test_bad_prompt_completion_records_name_the_field(
    record: dict[str, Any], expected: str
) -> None:
    assert f"line 1: {expected}" in problems(jsonl(record), "chat")


# ---- errors: preferences ---------------------------------------------------------------


def openai_preference(prompt: Any, chosen: Any, rejected: Any) -> dict[str, Any]:
    return {
        "input": {"messages": prompt},
        "preferred_output": chosen,
        "non_preferred_output": rejected,
    }


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"input": "q", "preferred_output": [], "non_preferred_output": []},
            'input: expected an object, got "q"',
        ),
        (
            {"input": {}, "preferred_output": [], "non_preferred_output": []},
            "input.messages: missing",
        ),
        (
            openai_preference(
                [msg("user", "q"), msg("assistant", "a")],
                [msg("assistant", "x")],
                [msg("assistant", "y")],
            ),
            'input.messages: the last message must be "user", got "assistant"',
        ),
        (
            openai_preference([msg("user", "q")], "x", [msg("assistant", "y")]),
            'preferred_output: expected an array of one assistant message, got "x"',
        ),
        (
            openai_preference(
                [msg("user", "q")], [msg("assistant", "x")], [msg("assistant", "y")] * 2
            ),
            "non_preferred_output: expected an array of one assistant message, got 2 messages",
        ),
        (
            openai_preference([msg("user", "q")], [msg("user", "x")], [msg("assistant", "y")]),
            'preferred_output[0].role: expected "assistant", got "user"',
        ),
        (
            openai_preference(
                [msg("user", "q")], [msg("assistant", "same")], [msg("assistant", "same ")]
            ),
            "non_preferred_output[0].content: the same as the preferred reply; the two must differ",
        ),
        (
            {"prompt": "q", "chosen": [msg("assistant", "x"), msg("user", "y")], "rejected": "z"},
            "chosen: expected a string or an array of one assistant message, got 2 messages",
        ),
        (
            {"prompt": "q", "chosen": "x", "rejected": {"a": 1}},
            "rejected: expected a string or an array",
        ),
        (
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            "rejected: the same as the preferred reply",
        ),
        ({"prompt": "q", "chosen": "", "rejected": "r"}, "chosen: is empty"),
        (
            {"prompt": [msg("system", "s")], "chosen": "x", "rejected": "y"},
            'prompt: the last message must be "user", got "system"',
        ),
        (
            {"chosen": "x", "rejected": "y"},
            'chosen: expected an array of messages (plain strings need a "prompt" field), got "x"',
        ),
        (
            {"chosen": [msg("user", "q"), msg("assistant", "x")], "rejected": [msg("user", "q")]},
            'rejected: the last message must be "assistant", got "user"',
        ),
        (
            {
                "chosen": [msg("user", "q"), msg("assistant", "x")],
                "rejected": [
                    msg("user", "q"),
                    msg("assistant", "a"),
                    msg("user", "q2"),
                    msg("assistant", "y"),
                ],
            },
            "rejected: has 4 messages and chosen 2; chosen and rejected must share all but",
        ),
        (
            {
                "chosen": [msg("user", "q"), msg("assistant", "x")],
                "rejected": [msg("user", "other"), msg("assistant", "y")],
            },
            "rejected[0]: differs from chosen[0]; chosen and rejected must share all but",
        ),
        (
            {
                "chosen": [msg("user", "q"), msg("assistant", "x")],
                "rejected": [msg("user", "q"), msg("assistant", "x")],
            },
            "rejected[1].content: the same as the preferred reply",
        ),
    ],
)
def test_bad_preference_records_name_line_and_field(record: dict[str, Any], expected: str) -> None:
    assert f"line 2: {expected}" in problems(jsonl(PREFERENCE, record), "preference")


# ---- collecting errors and limits ----------------------------------------------------------


def test_problems_are_collected_one_per_line_with_a_summary() -> None:
    data = jsonl(CHAT, {"messages": []}) + b"nope\n" + jsonl(CHAT, {"messages": [msg("user", "q")]})
    assert problems(data, "chat").splitlines() == [
        "3 problems in the dataset:",
        "line 2: messages: has no messages",
        "line 3: not valid JSON: Expecting value (column 1)",
        'line 5: messages: the last message must be "assistant", got "user"',
    ]


def test_one_problem_is_singular() -> None:
    assert problems(b"{}", "chat").splitlines()[0] == "1 problem in the dataset:"


def test_problems_past_max_errors_are_counted_not_listed() -> None:
    data = b"nope\n" * 30
    lines = problems(data, "chat", max_errors=5).splitlines()
    assert lines[0] == "30 problems in the dataset (showing the first 5):"
    assert lines[1:6] == [
        f"line {i}: not valid JSON: Expecting value (column 1)" for i in range(1, 6)
    ]
    assert lines[6:] == ["... and 25 more"]


def test_too_many_examples_are_refused_at_the_first_line_over() -> None:
    data = jsonl(*[CHAT] * 5)
    assert len(parse_dataset(data, "chat", max_examples=5)) == 5
    assert problems(data, "chat", max_examples=3).splitlines() == [
        "1 problem in the dataset:",
        "line 4: more examples than the limit of 3",
    ]


def test_a_line_over_the_limit_is_refused_and_the_rest_still_checked() -> None:
    long_line = b'{"prompt": "' + b"x" * MAX_LINE_BYTES + b'", "completion": "c"}\n'
    message = problems(long_line + b"nope\n", "chat")
    assert (
        f"line 1: the line is {len(long_line) - 1:,} bytes, over the limit of {MAX_LINE_BYTES:,}"
        in message
    )
    assert "line 2: not valid JSON" in message


def test_a_file_over_the_limit_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jsonl(CHAT, CHAT)
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", len(data) - 1)
    assert problems(data, "chat") == (
        f"the file is {len(data):,} bytes, over the limit of {len(data) - 1:,} bytes"
    )


@pytest.mark.parametrize("limits", [{"max_examples": 0}, {"max_errors": 0}])
def test_limits_must_be_positive(limits: dict[str, int]) -> None:
    [(name, _)] = limits.items()
    assert problems(jsonl(CHAT), "chat", **limits) == f"{name} must be at least 1, got 0"


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r'unknown dataset kind .sft.; expected "chat" or "preference"'
    ):
        parse_dataset(jsonl(CHAT), "sft")  # type: ignore[call-overload]


def test_a_large_valid_file_parses_completely() -> None:
    records = [
        {
            "messages": [
                msg("system", "s"),
                msg("user", f"question {i}"),
                msg("assistant", f"answer {i}"),
            ]
        }
        for i in range(20_000)
    ]
    examples = parse_dataset(jsonl(*records), "chat")
    assert len(examples) == 20_000
    assert examples[-1].line == 20_000
    assert examples[-1].messages[2]["content"] == "answer 19999"
