"""Scoring generated responses with a judge model over an OpenAI-compatible HTTP API.

As "Build a Large Language Model (From Scratch)" ch. 7 does with Ollama: for each test record
the judge is shown the instruction (in the Alpaca prompt format), the correct output and the
model's response, and asked for a score from 0 to 100; the first integer of its reply is the
score (None when the reply holds none in that range). Any server that speaks
``POST /v1/chat/completions`` works: a local Ollama (``http://localhost:11434``), vLLM,
llama.cpp's server, OpenAI. Requests are sent at temperature 0 with a fixed seed, so a
deterministic server gives the same scores each time. Standard library only.

>>> records = [{"instruction": "Name a colour.", "input": "", "output": "Red.",
...             "model_response": "Blue."}]
>>> score_responses(records, "http://localhost:11434", "llama3")  # doctest: +SKIP
[85]
>>> parse_score("Score: 92/100")
92
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from gristmill.progress import progress_bar
from gristmill.prompts import RESPONSE, alpaca_prompt

__all__ = ["JudgeError", "MODEL", "RETRIES", "TIMEOUT", "chat_completions_url", "judge_prompt",
           "parse_score", "score_responses"]

#: Defaults (the CLI's flags read these): the judge model the book uses, seconds per request,
#: and attempts per request when the server is unreachable, busy (429) or failing (5xx).
MODEL = "llama3"
TIMEOUT = 120.0
RETRIES = 3
SEED = 123  # the book's
_INTEGER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?", re.ASCII)


class JudgeError(ValueError):
    """The judge server cannot be reached or answers with an error; or a record is malformed."""


def chat_completions_url(url: str) -> str:
    """The endpoint for a server address: ``http://host:port`` and ``.../v1`` get
    ``/v1/chat/completions`` (or its tail) added; a full endpoint is kept.

    >>> chat_completions_url("http://localhost:11434")
    'http://localhost:11434/v1/chat/completions'
    """
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
        raise JudgeError(f"judge URL {url!r}: expected http://HOST[:PORT][/v1]")
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def judge_prompt(record: dict) -> str:
    """The book's ch. 7 scoring prompt for one record."""
    task = alpaca_prompt(record["instruction"], record.get("input") or "")
    task = task[: -len(RESPONSE)]  # the instruction (and input), as the book's format_input
    return (f"Given the input `{task}` and correct output `{record['output']}`, "
            f"score the model response `{record['model_response']}` on a scale from 0 to 100, "
            f"where 100 is the best score. Respond with the integer number only.")


def parse_score(reply: str) -> int | None:
    """The score in a judge's reply: its first number, if it is an integer from 0 to 100.

    >>> parse_score("85"), parse_score("I'd say 7.5"), parse_score("none"), parse_score("250")
    (85, None, None, None)
    """
    m = _INTEGER.search(reply or "")
    if m is None or not m.group().isdigit():
        return None
    value = int(m.group())
    return value if 0 <= value <= 100 else None


def _check_records(records: Sequence[dict]) -> None:
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise JudgeError(f"record {i}: expected an object with instruction, output and "
                             f"model_response, got a {type(r).__name__}")
        for key in ("instruction", "output", "model_response"):
            if not isinstance(r.get(key), str):
                got = "missing" if r.get(key) is None else f"a {type(r.get(key)).__name__}"
                raise JudgeError(f"record {i}: field {key!r}: expected a string, got {got}")
        if r.get("input") is not None and not isinstance(r["input"], str):
            raise JudgeError(f"record {i}: field 'input': expected a string")


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    text = getattr(reason, "strerror", None) or str(reason)
    return " ".join(text.split()) or type(reason).__name__


def _post(endpoint: str, body: dict, headers: dict, timeout: float, retries: int,
          backoff: float) -> dict:
    data = json.dumps(body).encode("utf-8")
    for attempt in range(retries):
        last = attempt == retries - 1
        request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if e.code in (429, 500, 502, 503, 504) and not last:
                time.sleep(backoff * 2 ** attempt)
                continue
            detail = e.read()[:300].decode("utf-8", errors="replace")
            detail = " ".join(detail.split())
            raise JudgeError(f"{endpoint}: the judge server answered HTTP {e.code}"
                             f"{': ' + detail if detail else ''}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, unknown host, timeout
            if not last:
                time.sleep(backoff * 2 ** attempt)
                continue
            raise JudgeError(f"{endpoint}: cannot reach the judge server ({_reason(e)}) after "
                             f"{retries} tries; start it (e.g. `ollama serve`) or pass another "
                             "URL") from None
        try:
            reply = json.loads(raw)
            return reply["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"{endpoint}: the reply is not an OpenAI chat completion (expected "
                             'JSON with choices[0].message)') from None
    raise AssertionError("unreachable")


def score_responses(records: Sequence[dict], url: str, model: str = MODEL, *,
                    timeout: float = TIMEOUT, api_key: str | None = None,
                    retries: int = RETRIES, backoff: float = 1.0,
                    progress: bool = False) -> list[int | None]:
    """Scores each record's ``model_response`` against its ``output`` with a judge model.

    Args:
        records: dicts with ``instruction``, ``input`` (optional), ``output`` and
            ``model_response`` (the responses file that instruction fine-tuning writes).
        url: the server (``http://localhost:11434``, ``.../v1`` or the full
            ``/v1/chat/completions`` endpoint).
        model: the judge model's name on that server.
        timeout: seconds to wait for each reply.
        api_key: sent as ``Authorization: Bearer ...`` (Ollama needs none).
        retries: attempts per request when the server is unreachable or answers 429/5xx,
            waiting ``backoff`` seconds, doubled each time, in between.

    Returns:
        One score per record, 0-100, or None where the reply held no such integer.

    Raises:
        JudgeError: a malformed record, an unreachable server or an error reply (one line
            naming the URL).
    """
    _check_records(records)
    if retries < 1:
        raise JudgeError(f"retries must be >= 1, got {retries}")
    endpoint = chat_completions_url(url)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    scores: list[int | None] = []
    with progress_bar(progress, desc="judge", total=len(records), unit="response") as bar:
        for record in records:
            body = {"model": model, "temperature": 0, "seed": SEED,
                    "messages": [{"role": "user", "content": judge_prompt(record)}]}
            message = _post(endpoint, body, headers, timeout, retries, backoff)
            content = message.get("content") if isinstance(message, dict) else None
            scores.append(parse_score(content if isinstance(content, str) else ""))
            bar.update(1)
    return scores
