"""Prompt formats of instruction-tuned runs: one home for fine-tuning, chat and the server.

Two formats, both built on the Alpaca layout that "Build a Large Language Model (From
Scratch)" (ch. 7) fine-tunes GPT-2 with, so a model tuned on either can chat:

``alpaca`` records (``instruction``, optional ``input``, ``output``)::

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when input is not empty
    {input}

    ### Response:
    {output}<|endoftext|>

``messages`` conversations (``[{"role": "system"|"user"|"assistant", "content": str}, ...]``):
the system message, if any, replaces the first paragraph; each user turn is an
``### Instruction:`` section and each assistant turn a ``### Response:`` section ended by the
end-of-text token, so generation stops where a turn ends. A single user message renders exactly
as an alpaca record with an empty input.

The end-of-text token is never written as text: :class:`Segment` says where it goes, so user
text that spells ``<|endoftext|>`` stays plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
INSTRUCTION = "\n\n### Instruction:\n"
INPUT = "\n\n### Input:\n"
RESPONSE = "\n\n### Response:\n"
ROLES = ("system", "user", "assistant")
TEMPLATES = ("alpaca",)  # the name saved with an instruction-tuned run


class PromptFormatError(ValueError):
    """A record or conversation that does not have the expected shape."""


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered example.

    Attributes:
        text: plain text (encoded without special tokens).
        target: whether the model is trained to produce it (the response), or only reads it.
        end: whether the end-of-text token follows the text (and is a target when ``target``).
    """

    text: str
    target: bool = False
    end: bool = False


def _text(record: dict, key: str, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise PromptFormatError(f"field {key!r}: expected a string, got {got}")
    return value


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The prompt for one instruction, up to and including the response header."""
    body = PREAMBLE + INSTRUCTION + instruction
    if input:
        body += INPUT + input
    return body + RESPONSE


def alpaca_segments(record: Any, with_response: bool = True) -> list[Segment]:
    """An alpaca record as segments: the prompt, then the response ended by end-of-text."""
    if not isinstance(record, dict):
        raise PromptFormatError(f"expected an object with 'instruction' and 'output', "
                                f"got a {type(record).__name__}")
    prompt = alpaca_prompt(_text(record, "instruction", True), _text(record, "input", False))
    if not with_response:
        return [Segment(prompt)]
    return [Segment(prompt), Segment(_text(record, "output", True), target=True, end=True)]


def check_messages(messages: Any) -> list[dict]:
    """The conversation checked: roles known, contents strings, system only first."""
    if not isinstance(messages, list) or not messages:
        raise PromptFormatError("'messages': expected a non-empty list of "
                                "{'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise PromptFormatError(f"messages[{i}]: expected an object, "
                                    f"got a {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise PromptFormatError(f"messages[{i}].role: expected one of {', '.join(ROLES)}, "
                                    f"got {role!r}")
        if role == "system" and i != 0:
            raise PromptFormatError(f"messages[{i}]: a system message may only come first")
        if not isinstance(m.get("content"), str):
            raise PromptFormatError(f"messages[{i}].content: expected a string")
    return messages


def chat_segments(messages: Sequence[dict], add_generation_prompt: bool = False
                  ) -> list[Segment]:
    """A conversation as segments; assistant turns are the targets.

    With ``add_generation_prompt`` the result ends with an open response header for the model
    to complete (the conversation should then end with a user turn).
    """
    messages = check_messages(list(messages))
    preamble = PREAMBLE
    if messages[0]["role"] == "system":
        preamble, messages = messages[0]["content"], messages[1:]
    segments: list[Segment] = []
    prompt = preamble
    for m in messages:
        if m["role"] == "user":
            prompt += INSTRUCTION + m["content"]
        else:
            segments.append(Segment(prompt + RESPONSE))
            segments.append(Segment(m["content"], target=True, end=True))
            prompt = ""
    if add_generation_prompt:
        segments.append(Segment(prompt + RESPONSE))
    elif prompt and prompt != preamble:
        segments.append(Segment(prompt))
    return segments


def encode_segments(tokenizer, segments: Sequence[Segment]) -> tuple[list[int], list[bool]]:
    """Token ids and, for each, whether it is a target (a response token or its end-of-text)."""
    ids: list[int] = []
    targets: list[bool] = []
    eot = tokenizer.eot_token
    for s in segments:
        piece = tokenizer.encode_ordinary(s.text) if s.text else []
        if s.end:
            piece = piece + [eot]
        ids.extend(piece)
        targets.extend([s.target] * len(piece))
    return ids, targets


def chat_prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """The token ids a model completes to answer the conversation's last user turn."""
    return encode_segments(tokenizer, chat_segments(messages, add_generation_prompt=True))[0]


def encode_segments_batch(tokenizer, examples: Sequence[Sequence[Segment]]):
    """:func:`encode_segments` of many examples at once, in flat arrays (the texts encoded in
    one parallel call; no Python work per token).

    Returns:
        ``(tokens, targets, offsets)``: int32 ids, a bool per id, and example ``i``'s slice
        ``offsets[i]:offsets[i + 1]`` of both.

    >>> from gristmill.tokenizer import Tokenizer
    >>> tok = Tokenizer.from_name("gpt2")
    >>> ids, tgt, offs = encode_segments_batch(tok, [[Segment("Hi"), Segment(" you", True, True)]])
    >>> ids.tolist(), tgt.tolist(), offs.tolist()
    ([17250, 345, 50256], [False, True, True], [0, 3])
    """
    import numpy as np

    segments = [s for ex in examples for s in ex]
    counts = np.fromiter((len(ex) for ex in examples), dtype=np.int64, count=len(examples))
    if segments:
        flat, offs = tokenizer.encode_batch_to_numpy([s.text for s in segments])
    else:
        flat, offs = np.zeros(0, np.uint32), np.zeros(1, np.int64)
    offs = np.asarray(offs, dtype=np.int64)
    end = np.fromiter((s.end for s in segments), dtype=bool, count=len(segments))
    target = np.fromiter((s.target for s in segments), dtype=bool, count=len(segments))
    seg_tokens = np.diff(offs)
    seg_len = seg_tokens + end
    seg_start = np.cumsum(seg_len) - seg_len
    tokens = np.empty(int(seg_len.sum()), dtype=np.int32)
    shift = np.repeat(seg_start - offs[:-1], seg_tokens)
    tokens[shift + np.arange(len(flat))] = flat
    tokens[(seg_start + seg_tokens)[end]] = tokenizer.eot_token
    targets = np.repeat(target, seg_len)
    ex_end = np.cumsum(counts)
    bounds = np.concatenate([[0], np.cumsum(seg_len)])
    offsets = bounds[np.concatenate([[0], ex_end])]
    return tokens, targets, offsets.astype(np.int64)
