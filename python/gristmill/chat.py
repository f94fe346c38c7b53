"""A conversation with an instruction-tuned model: the history, its prompt, streamed replies.

Each turn renders the whole conversation in the run's prompt format (:mod:`gristmill.prompts`:
user turns as ``### Instruction:`` sections, replies as ``### Response:`` sections ended by
end-of-text) and streams the model's reply until end-of-text, a stop string or
``max_new_tokens``. When the conversation no longer fits the model's context with room for a
reply, the oldest turns are dropped (the system message stays) and :attr:`Chat.dropped` says
how many. ``gristmill chat`` is this in a terminal.

>>> chat = Chat(model, tok, SamplingConfig(temperature=0))  # doctest: +SKIP
>>> "".join(chat.reply("Name three primary colours."))  # doctest: +SKIP
'Red, yellow and blue.'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from gristmill.checkpoint import META, find_checkpoint
from gristmill.prompts import INSTRUCTION, TEMPLATES, chat_prompt_ids
from gristmill.sample import SamplingConfig, TextStream, generate_steps

__all__ = ["Chat", "ChatError", "run_template"]


class ChatError(ValueError):
    """A message that cannot be answered (longer than the model's context), or a run whose
    prompt template is unknown."""


def run_template(path) -> tuple[str, bool]:
    """The prompt template an instruction-tuned run recorded (``"template"`` in its
    checkpoint's config.json, at the top or in a section), and whether one was recorded
    (``("alpaca", False)`` for a pretrained model or a Hugging Face folder).

    Raises:
        ChatError: the recorded template is not one of :data:`gristmill.prompts.TEMPLATES`.
    """
    import json

    config = Path(find_checkpoint(path)) / META
    try:
        meta = json.loads(config.read_bytes())
    except (OSError, ValueError):
        return TEMPLATES[0], False  # no config.json, or not ours: load_model says what is wrong
    if not isinstance(meta, dict):
        return TEMPLATES[0], False
    places = [("template", meta)] + [(f"{k}.template", v) for k, v in meta.items()
                                     if isinstance(v, dict)]
    for field, where in places:
        if "template" in where:
            name = where["template"]
            if name not in TEMPLATES:
                raise ChatError(f"{config}: {field} is {name!r}; expected one of "
                                f"{', '.join(TEMPLATES)}")
            return name, True
    return TEMPLATES[0], False


class Chat:
    """A conversation with ``model``.

    Args:
        model: a :class:`~gristmill.model.GPT` in eval mode.
        tokenizer: its tokenizer (end-of-text ends a reply).
        config: how to sample each reply (``max_new_tokens`` is the room kept for it).
        system: replaces the prompt format's first paragraph, for every turn.
        template: the prompt format (see :mod:`gristmill.prompts`).
    """

    def __init__(self, model, tokenizer, config: SamplingConfig | None = None, *,
                 system: str | None = None, template: str = TEMPLATES[0]):
        if template not in TEMPLATES:
            raise ChatError(f"template {template!r}: expected one of {', '.join(TEMPLATES)}")
        self.model, self.tok = model, tokenizer
        config = config or SamplingConfig()
        # A model that runs on into the next turn's header has finished its reply.
        stops = tuple(dict.fromkeys([*config.stop_strings, INSTRUCTION]))
        self.config = dataclasses.replace(config, stop_strings=stops)
        self.config.check()
        self.system = system
        self.messages: list[dict] = []
        self.dropped = 0  # turns dropped to fit the context while preparing the last reply
        self.shortened = None  # the max_new_tokens the last reply had, when lowered to fit

    def reset(self) -> None:
        """Forgets the conversation (the system message stays)."""
        self.messages = []

    def _conversation(self, messages):
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + messages

    def _fit(self, text: str) -> tuple[list[int], int]:
        """The prompt ids for the history plus ``text``, dropping the oldest turns until
        ``max_new_tokens`` fit after it; and the room left for the reply."""
        block = self.model.config.block_size
        messages = [*self.messages, {"role": "user", "content": text}]
        self.dropped = 0
        while True:
            ids = chat_prompt_ids(self.tok, self._conversation(messages))
            if len(ids) + self.config.max_new_tokens <= block or len(messages) == 1:
                break
            messages = messages[2:]  # the oldest question and its answer
            self.dropped += 1
        room = block - len(ids)
        if room < 1:
            raise ChatError(f"the message needs {len(ids)} tokens with its prompt; the model's "
                            f"context holds {block}: shorten it")
        self.messages = messages
        return ids, min(room, self.config.max_new_tokens)

    def reply(self, text: str) -> Iterator[str]:
        """Streams the model's answer to ``text`` (pieces of text as they are decoded); the
        answer joins the history as it is streamed (so far as it got when the stream is
        closed early). The history is fitted to the context at once: :attr:`dropped` and
        :attr:`shortened` are set when this returns.

        Raises:
            ChatError: ``text`` alone does not fit the model's context (nothing is kept).
        """
        ids, room = self._fit(text)
        self.shortened = room if room < self.config.max_new_tokens else None
        return self._stream(ids, dataclasses.replace(self.config, max_new_tokens=room))

    def _stream(self, ids: list[int], cfg: SamplingConfig) -> Iterator[str]:
        stream = TextStream(self.tok, cfg.stop_strings)
        eot = self.tok.eot_token
        pieces = []
        try:
            for tokens, _ in generate_steps(self.model, [ids], cfg, eot_token=eot,
                                            token_bytes=self.tok.decode_single_token_bytes):
                token = int(tokens[0])
                if token == eot:
                    break
                piece = stream.push(token)
                if piece:
                    pieces.append(piece)
                    yield piece
                if stream.stopped:
                    break
            tail = stream.flush()
            if tail:
                pieces.append(tail)
                yield tail
        finally:  # an answer cut short (Ctrl-C) still joins the history as far as it got
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})
