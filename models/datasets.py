"""Fine-tuning datasets given as JSONL: parsed and checked before anything is queued.

Each non-blank line is one example, in one of the formats people already have files in:

    kind "chat" (supervised fine-tuning)
        openai_chat              {"messages": [{"role", "content", "weight"?}, ...]}  (TRL's too)
        trl_prompt_completion    {"prompt": str | messages, "completion": str | messages}
    kind "preference" (DPO)
        openai_preference        {"input": {"messages": [...]}, "preferred_output": [reply],
                                  "non_preferred_output": [reply]}
        trl_preference           {"prompt": str | messages, "chosen": str | [reply],
                                  "rejected": str | [reply]}
        trl_implicit_preference  {"chosen": messages, "rejected": messages}

Every problem names its 1-based line and the field (`line 12: messages[2].role: ...`), and up
to `max_errors` of them are raised together as one ConfigError, so a file is fixed in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, overload

from swarm.protocol.errors import ConfigError

MAX_DATASET_BYTES = 256 * 1024 * 1024
MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_CONTENT_BYTES = 1024 * 1024

Message = dict[str, str]  # {"role": ..., "content": ...}
DatasetKind = Literal["chat", "preference"]

_ROLES = ("system", "user", "assistant")
_UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call")
_BOM = b"\xef\xbb\xbf"

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ChatExample:
    """One conversation for supervised fine-tuning.

    Attributes:
        messages: an optional system message, then user and assistant alternating, ending with
            an assistant message; each holds exactly "role" and "content".
        line: the 1-based line of the file the example came from.
        train_on: per message, whether the loss counts it: True only for assistant messages
            that are trained on (OpenAI's "weight", default 1; never a prompt's messages).
    """

    messages: tuple[Message, ...]
    line: int
    train_on: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True)
class PreferenceExample:
    """One prompt with a preferred and a non-preferred assistant reply, for DPO.

    Attributes:
        prompt: an optional system message, then user and assistant alternating, ending with a
            user message; each holds exactly "role" and "content".
        chosen: the preferred assistant reply.
        rejected: the non-preferred assistant reply (never the same as `chosen`).
        line: the 1-based line of the file the example came from.
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    line: int


@dataclass(frozen=True)
class _Format:
    keys: frozenset[str]
    looks_like: str


# In the order they are tried: a record with every key of a format is in that format.
_FORMATS = {
    "openai_preference": _Format(
        frozenset({"input", "preferred_output", "non_preferred_output"}),
        "a preference example (input/preferred_output)",
    ),
    "trl_preference": _Format(
        frozenset({"prompt", "chosen", "rejected"}), "a preference example (prompt/chosen/rejected)"
    ),
    "trl_implicit_preference": _Format(
        frozenset({"chosen", "rejected"}), "a preference example (chosen/rejected)"
    ),
    "openai_chat": _Format(frozenset({"messages"}), "a chat example (messages)"),
    "trl_prompt_completion": _Format(
        frozenset({"prompt", "completion"}), "a chat example (prompt/completion)"
    ),
}

_NEEDS: dict[str, str] = {
    "chat": (
        'supervised fine-tuning needs {"messages": [...]} or {"prompt": ..., "completion": ...}'
    ),
    "preference": (
        'preference fine-tuning (DPO) needs {"prompt": ..., "chosen": ..., "rejected": ...}, '
        '{"chosen": [...], "rejected": [...]} or '
        '{"input": ..., "preferred_output": [...], "non_preferred_output": [...]}'
    ),
}


@dataclass(frozen=True)
class _Turn:
    """A checked message, with where it came from for later errors."""

    path: str  # "messages[2]", or "prompt" for a message given as a plain string
    role_path: str
    role: str
    content: str
    trained: bool


@overload
def parse_dataset(
    data: bytes, kind: Literal["chat"], *, max_examples: int = ..., max_errors: int = ...
) -> list[ChatExample]: ...
@overload
def parse_dataset(
    data: bytes, kind: Literal["preference"], *, max_examples: int = ..., max_errors: int = ...
) -> list[PreferenceExample]: ...
def parse_dataset(
    data: bytes, kind: DatasetKind, *, max_examples: int = 1_000_000, max_errors: int = 20
) -> list[ChatExample] | list[PreferenceExample]:
    """Parse and check a JSONL fine-tuning dataset.

    Args:
        data: the file's bytes: UTF-8 (a leading BOM is tolerated), one JSON object a line;
            blank lines are skipped.
        kind: "chat" for supervised fine-tuning, "preference" for DPO.
        max_examples: the most examples the file may hold.
        max_errors: the most problems listed in the error; the rest are only counted.

    Returns:
        The examples in file order.

    Raises:
        ConfigError: the arguments are invalid, the file is too large or empty, or one or more
            lines are bad; the message then lists the problems one a line, each naming its line
            and field.
    """
    for name, value in (("max_examples", max_examples), ("max_errors", max_errors)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if kind == "chat":
        return _parse_lines(data, kind, _CHAT_PARSERS, max_examples, max_errors)
    if kind == "preference":
        return _parse_lines(data, kind, _PREFERENCE_PARSERS, max_examples, max_errors)
    raise ConfigError(f'unknown dataset kind {kind!r}; expected "chat" or "preference"')


def detect_format(record: Mapping[str, Any]) -> str:
    """The format of one dataset record, told by its top-level keys (others are ignored).

    Returns:
        One of "openai_chat", "trl_prompt_completion", "openai_preference", "trl_preference"
        and "trl_implicit_preference".

    Raises:
        ConfigError: no format has all its keys in `record`; the message names the closest
            format and the keys it lacks.
    """
    keys = record.keys()
    for name, fmt in _FORMATS.items():
        if fmt.keys <= keys:
            return name
    closest = max(_FORMATS.values(), key=lambda f: (len(f.keys & keys), -len(f.keys - keys)))
    if closest.keys & keys:
        missing = ", ".join(f'"{k}"' for k in sorted(closest.keys - keys))
        raise ConfigError(f"this looks like {closest.looks_like} but has no {missing}")
    found = ", ".join(f'"{k}"' for k in sorted(keys)) or "none"
    raise ConfigError(
        f"no known format (top-level keys: {found}); expected "
        '"messages", "prompt"/"completion", "prompt"/"chosen"/"rejected", "chosen"/"rejected" '
        'or "input"/"preferred_output"/"non_preferred_output"'
    )


def _parse_lines(
    data: bytes,
    kind: DatasetKind,
    parsers: Mapping[str, Callable[[dict[str, Any], int], T]],
    max_examples: int,
    max_errors: int,
) -> list[T]:
    if len(data) > MAX_DATASET_BYTES:
        raise ConfigError(
            f"the file is {len(data):,} bytes, over the limit of {MAX_DATASET_BYTES:,} bytes"
        )
    examples: list[T] = []
    problems = _Problems(max_shown=max_errors)
    num_records = 0
    for line, raw in enumerate(data.removeprefix(_BOM).split(b"\n"), start=1):
        if not raw.strip():
            continue
        num_records += 1
        if num_records > max_examples:
            problems.add(line, f"more examples than the limit of {max_examples:,}")
            break
        try:
            record = _decode_line(raw)
            fmt = detect_format(record)
            if fmt not in parsers:
                raise ConfigError(f"this looks like {_FORMATS[fmt].looks_like}; {_NEEDS[kind]}")
            examples.append(parsers[fmt](record, line))
        except ConfigError as error:
            problems.add(line, str(error))
    if num_records == 0:
        raise ConfigError("the file has no examples")
    problems.raise_if_any()
    return examples


class _Problems:
    """Counts every problem, keeps the first few, and raises them as one error."""

    def __init__(self, *, max_shown: int) -> None:
        self.max_shown = max_shown
        self.shown: list[str] = []
        self.count = 0

    def add(self, line: int, problem: str) -> None:
        self.count += 1
        if len(self.shown) < self.max_shown:
            self.shown.append(f"line {line}: {problem}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        head = f"{self.count} {'problem' if self.count == 1 else 'problems'} in the dataset"
        if self.count == len(self.shown):
            raise ConfigError("\n".join([f"{head}:", *self.shown]))
        more = f"... and {self.count - len(self.shown)} more"
        raise ConfigError(
            "\n".join([f"{head} (showing the first {len(self.shown)}):", *self.shown, more])
        )


def _decode_line(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_LINE_BYTES:
        raise ConfigError(f"the line is {len(raw):,} bytes, over the limit of {MAX_LINE_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start]
        raise ConfigError(f"not valid UTF-8 (byte 0x{bad:02x} at byte {error.start + 1})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"not valid JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise ConfigError("not valid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise ConfigError(f"expected a JSON object, got {_describe(record)}")
    return record


# ---- chat (SFT) ----------------------------------------------------------------------------


def _chat_from_openai(record: dict[str, Any], line: int) -> ChatExample:
    return _chat_example(_messages(record["messages"], "messages"), "messages", line)


def _chat_from_prompt_completion(record: dict[str, Any], line: int) -> ChatExample:
    # As in TRL, only the completion is trained on: the prompt is context.
    prompt = _turns(record["prompt"], "prompt", string_role="user")
    completion = _turns(record["completion"], "completion", string_role="assistant")
    untrained = [replace(turn, trained=False) for turn in prompt]
    return _chat_example(untrained + completion, "completion", line)


def _chat_example(turns: list[_Turn], path: str, line: int) -> ChatExample:
    _check_order(turns, path, ends_with="assistant")
    if not any(turn.trained for turn in turns):
        raise _field_error(path, "no assistant message is trained on (each has weight 0)")
    return ChatExample(
        messages=_as_messages(turns), line=line, train_on=tuple(t.trained for t in turns)
    )


_CHAT_PARSERS: dict[str, Callable[[dict[str, Any], int], ChatExample]] = {
    "openai_chat": _chat_from_openai,
    "trl_prompt_completion": _chat_from_prompt_completion,
}


# ---- preference (DPO) ----------------------------------------------------------------------


def _preference_from_openai(record: dict[str, Any], line: int) -> PreferenceExample:
    source = record["input"]
    if not isinstance(source, dict):
        raise _field_error("input", f"expected an object, got {_describe(source)}")
    if "messages" not in source:
        raise _field_error("input.messages", "missing")
    prompt = _messages(source["messages"], "input.messages")
    _check_order(prompt, "input.messages", ends_with="user")
    chosen = _reply(record["preferred_output"], "preferred_output", allow_string=False)
    rejected = _reply(record["non_preferred_output"], "non_preferred_output", allow_string=False)
    return _preference_example(prompt, chosen, rejected, "non_preferred_output[0].content", line)


def _preference_from_trl(record: dict[str, Any], line: int) -> PreferenceExample:
    prompt = _turns(record["prompt"], "prompt", string_role="user")
    _check_order(prompt, "prompt", ends_with="user")
    chosen = _reply(record["chosen"], "chosen", allow_string=True)
    rejected = _reply(record["rejected"], "rejected", allow_string=True)
    return _preference_example(prompt, chosen, rejected, "rejected", line)


def _preference_from_trl_implicit(record: dict[str, Any], line: int) -> PreferenceExample:
    expected = 'an array of messages (plain strings need a "prompt" field)'
    chosen = _messages(record["chosen"], "chosen", expected=expected)
    rejected = _messages(record["rejected"], "rejected", expected=expected)
    _check_order(chosen, "chosen", ends_with="assistant")
    _check_order(rejected, "rejected", ends_with="assistant")
    shared = "chosen and rejected must share all but their final assistant message"
    if len(chosen) != len(rejected):
        raise _field_error(
            "rejected", f"has {len(rejected)} messages and chosen {len(chosen)}; {shared}"
        )
    for ours, theirs in zip(chosen[:-1], rejected[:-1], strict=True):
        if (ours.role, ours.content) != (theirs.role, theirs.content):
            raise _field_error(theirs.path, f"differs from {ours.path}; {shared}")
    return _preference_example(
        chosen[:-1], chosen[-1].content, rejected[-1].content, f"{rejected[-1].path}.content", line
    )


def _preference_example(
    prompt: list[_Turn], chosen: str, rejected: str, rejected_path: str, line: int
) -> PreferenceExample:
    if chosen.strip() == rejected.strip():
        raise _field_error(rejected_path, "the same as the preferred reply; the two must differ")
    return PreferenceExample(
        prompt=_as_messages(prompt), chosen=chosen, rejected=rejected, line=line
    )


_PREFERENCE_PARSERS: dict[str, Callable[[dict[str, Any], int], PreferenceExample]] = {
    "openai_preference": _preference_from_openai,
    "trl_preference": _preference_from_trl,
    "trl_implicit_preference": _preference_from_trl_implicit,
}


# ---- messages ------------------------------------------------------------------------------


def _turns(value: Any, path: str, *, string_role: str) -> list[_Turn]:
    """A list of messages, or a plain string taken as one message from `string_role`."""
    if isinstance(value, str):
        content = _content(value, path)
        trained = string_role == "assistant"
        return [
            _Turn(path=path, role_path=path, role=string_role, content=content, trained=trained)
        ]
    return _messages(value, path, expected="a string or an array of messages")


def _messages(value: Any, path: str, *, expected: str = "an array of messages") -> list[_Turn]:
    if not isinstance(value, list):
        raise _field_error(path, f"expected {expected}, got {_describe(value)}")
    if not value:
        raise _field_error(path, "has no messages")
    return [_message(item, f"{path}[{i}]") for i, item in enumerate(value)]


def _message(value: Any, path: str) -> _Turn:
    """One checked message; "name" and keys swarm does not know are ignored."""
    if not isinstance(value, dict):
        raise _field_error(path, f"expected a message object, got {_describe(value)}")
    for key in _UNSUPPORTED_MESSAGE_KEYS:
        # API responses pasted into datasets carry these as null, which means "none".
        if value.get(key) is not None:
            raise _field_error(f"{path}.{key}", "tool and function calls are not supported")
    if "role" not in value:
        raise _field_error(f"{path}.role", "missing")
    role = value["role"]
    if role not in _ROLES:
        roles = ", ".join(f'"{r}"' for r in _ROLES)
        raise _field_error(f"{path}.role", f"expected one of {roles}, got {_describe(role)}")
    if "content" not in value:
        raise _field_error(f"{path}.content", "missing")
    content = _content(value["content"], f"{path}.content")
    trained = role == "assistant"
    if "weight" in value:
        trained = _weight(value["weight"], role, f"{path}.weight")
    return _Turn(path=path, role_path=f"{path}.role", role=role, content=content, trained=trained)


def _content(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _field_error(path, f"expected a string, got {_describe(value)}")
    if not value.strip():
        raise _field_error(path, "is empty")
    size_bytes = len(value.encode("utf-8"))
    if size_bytes > MAX_CONTENT_BYTES:
        raise _field_error(
            path, f"is {size_bytes:,} bytes, over the limit of {MAX_CONTENT_BYTES:,}"
        )
    return value


def _weight(value: Any, role: str, path: str) -> bool:
    if role != "assistant":
        raise _field_error(path, f'only assistant messages have a weight, not "{role}" ones')
    # `type(...) is int` because JSON true parses to True, which Python counts as an int.
    if type(value) is not int or value not in (0, 1):
        raise _field_error(path, f"expected 0 or 1, got {_describe(value)}")
    return value == 1


def _reply(value: Any, path: str, *, allow_string: bool) -> str:
    """The content of a reply: one assistant message in a list, or (if allowed) a string."""
    if allow_string and isinstance(value, str):
        return _content(value, path)
    if not isinstance(value, list) or len(value) != 1:
        expected = "a string or " if allow_string else ""
        got = f"{len(value)} messages" if isinstance(value, list) else _describe(value)
        raise _field_error(path, f"expected {expected}an array of one assistant message, got {got}")
    turn = _message(value[0], f"{path}[0]")
    if turn.role != "assistant":
        raise _field_error(turn.role_path, f'expected "assistant", got "{turn.role}"')
    return turn.content


def _check_order(turns: list[_Turn], path: str, *, ends_with: str) -> None:
    """System only first; then user and assistant alternating, starting with user."""
    previous = None
    for i, turn in enumerate(turns):
        if turn.role == "system":
            if i > 0:
                raise _field_error(turn.role_path, '"system" is only allowed as the first message')
        else:
            expected = "assistant" if previous == "user" else "user"
            if turn.role != expected:
                where = f'after "{previous}"' if previous else "first"
                raise _field_error(
                    turn.role_path, f'expected "{expected}" {where}, got "{turn.role}"'
                )
        previous = turn.role
    if previous != ends_with:
        raise _field_error(path, f'the last message must be "{ends_with}", got "{previous}"')


def _as_messages(turns: list[_Turn]) -> tuple[Message, ...]:
    return tuple({"role": turn.role, "content": turn.content} for turn in turns)


def _field_error(path: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}")


def _describe(value: Any) -> str:
    """A JSON value as an error shows it: scalars as written, containers by their type."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > 40:
        return json.dumps(value[:40]) + "..."
    return json.dumps(value)
