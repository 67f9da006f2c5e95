"""Chat tokenization: conversations to token ids with a mask of the tokens trained on.

Conversations are rendered with the model's own chat template. The tokens of an assistant reply
are found by rendering the conversation up to the reply with the generation prompt, then up to
and including the reply: the difference is exactly what the model must learn to produce (the
reply and its end-of-turn marker). That needs a template whose renderings of a conversation's
prefixes are prefixes of each other, which is checked, not assumed.

The tiny test presets have no tokenizer files; `byte_chat_tokenizer` builds a byte-level
tokenizer with a ChatML template in memory, so SFT and DPO run offline on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from swarm.models.datasets import ChatExample, Message, PreferenceExample
from swarm.protocol.errors import ConfigError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BYTE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_alphabet() -> list[str]:
    """The printable character byte-level BPE uses for each of the 256 byte values, by value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


@lru_cache(maxsize=1)
def byte_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (id = byte value) plus ChatML special tokens, vocabulary 259."""
    vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a chat template (GPT-2, Pythia) a plain ChatML one."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def render_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template."""
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        ids: Any = tokenizer.apply_chat_template(
            conversation, tokenize=True, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as exc:  # e.g. a template that refuses system messages
        raise ConfigError(f"the model's chat template refused this conversation: {exc}") from None
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


@dataclass(frozen=True, kw_only=True)
class TokenizedSequence:
    """One sequence and the mask of the tokens its loss counts (1) or ignores (0)."""

    ids: np.ndarray  # int32
    mask: np.ndarray  # uint8
    truncated: bool


def _reply_span(
    tokenizer: PreTrainedTokenizerBase, before: Sequence[Message], reply: Message, line: int
) -> tuple[list[int], int]:
    """Ids of `before + [reply]` and where the reply's tokens start."""
    try:
        prompt = render_ids(tokenizer, before, add_generation_prompt=True)
        full = render_ids(tokenizer, [*before, reply])
    except ConfigError as exc:
        raise ConfigError(f"line {line}: {exc}") from None
    if full[: len(prompt)] != prompt or len(full) <= len(prompt):
        raise ConfigError(
            f"line {line}: this model's chat template does not render a reply as a continuation "
            "of its prompt, so the reply's tokens cannot be found; use a model whose template "
            "does (ChatML, Llama and Qwen2 templates do)"
        )
    return full, len(prompt)


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase, example: ChatExample, max_tokens: int
) -> TokenizedSequence:
    """Ids of a conversation with the mask set on the assistant replies it trains on.

    Sequences longer than `max_tokens` are cut at the end; one whose every trained token falls
    past the cut is rejected, naming its line.
    """
    ids: list[int] = []
    mask: list[int] = []
    for i, message in enumerate(example.messages):
        if len(ids) > max_tokens:  # everything later would be cut anyway
            break
        if message["role"] != "assistant":
            continue
        full, start = _reply_span(tokenizer, example.messages[:i], message, example.line)
        if full[: len(ids)] != ids:
            raise ConfigError(
                f"line {example.line}: this model's chat template renders earlier turns "
                "differently once later ones follow, so replies cannot be masked"
            )
        mask += [0] * (start - len(ids)) + [int(example.train_on[i])] * (len(full) - start)
        ids = full
    return _cut(ids, mask, max_tokens, example.line)


def tokenize_preference(
    tokenizer: PreTrainedTokenizerBase, example: PreferenceExample, max_tokens: int
) -> tuple[TokenizedSequence, TokenizedSequence]:
    """(chosen, rejected): the prompt followed by each reply, the mask on the reply."""
    pair = []
    for reply in (example.chosen, example.rejected):
        full, start = _reply_span(
            tokenizer, example.prompt, {"role": "assistant", "content": reply}, example.line
        )
        pair.append(_cut(full, [0] * start + [1] * (len(full) - start), max_tokens, example.line))
    return pair[0], pair[1]


def _cut(ids: list[int], mask: list[int], max_tokens: int, line: int) -> TokenizedSequence:
    truncated = len(ids) > max_tokens
    ids, mask = ids[:max_tokens], mask[:max_tokens]
    if not any(mask):
        raise ConfigError(
            f"line {line}: no reply token is left within the job's seq_len of {max_tokens} "
            "tokens; shorten the prompt or raise seq_len"
        )
    return TokenizedSequence(
        ids=np.asarray(ids, dtype=np.int32),
        mask=np.asarray(mask, dtype=np.uint8),
        truncated=truncated,
    )


@torch.no_grad()
def generate_reply(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    max_new_tokens: int = 32,
) -> str:
    """The model's greedy reply to a conversation, as text."""
    prompt = torch.tensor([render_ids(tokenizer, messages, add_generation_prompt=True)])
    model.eval()
    output = model.generate(  # type: ignore[operator]
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return str(tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)).strip()


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample | PreferenceExample],
    max_tokens: int,
) -> dict[str, list[TokenizedSequence]]:
    """Conversations as `sequences`; preference pairs as aligned `chosen` and `rejected`."""
    sets: dict[str, list[TokenizedSequence]] = {}
    for example in examples:
        if isinstance(example, ChatExample):
            sets.setdefault("sequences", []).append(tokenize_chat(tokenizer, example, max_tokens))
        else:
            chosen, rejected = tokenize_preference(tokenizer, example, max_tokens)
            sets.setdefault("chosen", []).append(chosen)
            sets.setdefault("rejected", []).append(rejected)
    return sets
