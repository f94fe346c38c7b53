"""An OpenAI-compatible HTTP server for a model, with a chat page: ``gristmill serve RUN``.

Endpoints, as OpenAI's API names them (so its clients, and tools built on them, work):

- ``POST /v1/completions`` and ``POST /v1/chat/completions``: ``max_tokens``
  (``max_completion_tokens``), ``temperature``, ``top_p``, ``stop`` (a string or up to 4),
  ``n``, ``seed``, ``frequency_penalty``, ``presence_penalty``, ``stream`` (server-sent events,
  ending ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk), ``usage``
  counts. Chat renders ``messages`` in the run's prompt format (:mod:`gristmill.prompts`).
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``; ``GET /`` a chat page.

Requests are decoded together by :class:`gristmill.batching.BatchEngine` (continuous
batching); when ``max_queue`` requests already wait for a place, a new one gets 503 with
``Retry-After``. Every bad request (bad JSON, an unknown model, a bad field, a prompt that does
not fit the context) gets OpenAI's error shape, ``{"error": {"message", "type", "param",
"code"}}``, with a 4xx status; nothing a request does stops the server. A client that goes
away (a closed stream) frees its places in the batch at the next step.

With ``seed``, choice ``i`` of ``n`` samples with ``seed + i``; the text is the same whether
the request runs alone or batched with others.

>>> serve(model, tok, "my-model", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from gristmill.batching import BatchEngine, Done, Job, QueueFull, Text
from gristmill.defaults import SERVE
from gristmill.prompts import PromptFormatError, chat_prompt_ids, check_messages
from gristmill.sample import SamplingConfig

__all__ = ["APIError", "create_app", "free_port", "running_server", "serve"]

DEFAULT_MAX_TOKENS = 16  # /v1/completions without max_tokens, as OpenAI's API
MAX_STOP = 4


class APIError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type)

    def response(self, headers: dict | None = None) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


# ---- reading a request ----------------------------------------------------------------------


def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        want = "an integer" if integer else "a number"
        raise APIError(400, f"{key}: expected {want} in [{low}, {high}], got {value!r}", key)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP
            and all(isinstance(s, str) for s in stop)):
        raise APIError(400, f"stop: expected a string or a list of up to {MAX_STOP} strings",
                       "stop")
    return tuple(s for s in stop if s)


def _prompt_ids(body: dict, tokenizer) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, allowed_special="all") or [tokenizer.eot_token]
    if isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < tokenizer.n_vocab]
        if bad:
            raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary "
                           f"(0..{tokenizer.n_vocab - 1})", "prompt")
        return prompt
    raise APIError(400, "prompt: expected a string or a list of token ids (one prompt per "
                   "request)", "prompt")


def read_request(body, chat: bool, model_id: str, tokenizer, block_size: int,
                 max_batch: int) -> tuple[list[int], list[SamplingConfig], dict]:
    """The prompt ids, one sampling config per choice, and the response options (``stream``,
    ``include_usage``) of a request body.

    Raises:
        APIError: a field missing, of the wrong type or out of range; an unknown model; a
            prompt that does not fit the context.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise APIError(400, "model: expected the model's id (see /v1/models)", "model")
    if model != model_id:
        raise APIError(404, f"The model `{model}` does not exist; this server has "
                       f"`{model_id}`", "model", "model_not_found")
    if chat:
        try:
            prompt = chat_prompt_ids(tokenizer, check_messages(body.get("messages")))
        except PromptFormatError as e:
            raise APIError(400, str(e), "messages") from None
    else:
        prompt = _prompt_ids(body, tokenizer)
    if body.get("logprobs") not in (None, False) or body.get("echo") or body.get("best_of") \
            not in (None, 1):
        raise APIError(400, "logprobs, echo and best_of are not supported by this server")
    room = block_size - len(prompt)
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {block_size} tokens; "
                       f"the prompt has {len(prompt)}", "messages" if chat else "prompt",
                       "context_length_exceeded")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _number(body, key, None, 1, 2**31, integer=True)
    if max_tokens is None:
        max_tokens = room if chat else min(DEFAULT_MAX_TOKENS, room)
    elif max_tokens > room:
        raise APIError(400, f"This model's maximum context length is {block_size} tokens; "
                       f"the prompt has {len(prompt)} and {key} asks for {max_tokens} more",
                       key, "context_length_exceeded")
    n = _number(body, "n", 1, 1, max_batch, integer=True)
    seed = _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise APIError(400, "stream: expected true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "stream_options: expected an object", "stream_options")
    base = SamplingConfig(
        max_new_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, 0, 2)),
        top_p=float(_number(body, "top_p", 1.0, 0, 1)) or 1e-9,
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2, 2)),
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2, 2)),
        stop_strings=_stops(body))
    configs = [SamplingConfig(**{**base.__dict__, "seed": None if seed is None else
                                 (seed + i) % 2**63}) for i in range(n)]
    return prompt, configs, {"stream": bool(stream),
                             "include_usage": bool(options.get("include_usage"))}


# ---- the app --------------------------------------------------------------------------------


def _page() -> str:
    return resources.files("gristmill").joinpath("static", "chat.html").read_text("utf-8")


class _LoopChannel:
    """A :class:`gristmill.batching.Channel` onto an event loop: a decoding step's events for
    all of the loop's requests cross threads in one ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def send(self, events: list) -> None:
        self.loop.call_soon_threadsafe(_fan_out, events)


def _fan_out(events: list) -> None:
    for job, event in events:
        job.emit(event)


def create_app(engine, tokenizer, model_id: str, block_size: int | None = None) -> Starlette:
    """The Starlette app serving ``engine`` (a :class:`BatchEngine`, or anything with its
    ``submit``, ``max_batch`` and ``load`` that delivers events through ``Job.channel``) under
    the name ``model_id``."""
    block_size = block_size or engine.block_size
    channels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    created = int(time.time())
    model_card = {"id": model_id, "object": "model", "created": created, "owned_by": "gristmill",
                  "max_model_len": block_size}

    async def parse(request: Request) -> dict:
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None

    def submit(prompt, configs, stream: bool) -> tuple[Job, asyncio.Queue]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        channel = channels.get(loop)
        if channel is None:
            channel = channels[loop] = _LoopChannel(loop)
        job = Job(prompt, configs, queue.put_nowait, channel, stream)
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(503, f"the server is busy ({e}); retry shortly", None, "queue_full",
                           "server_error") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return job, queue

    async def complete(request: Request, chat: bool):
        body = await parse(request)
        prompt, configs, opts = read_request(body, chat, model_id, tokenizer, block_size,
                                             engine.max_batch)
        job, queue = submit(prompt, configs, opts["stream"])
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "created": int(time.time()), "model": model_id}
        n = len(configs)
        if opts["stream"]:
            return StreamingResponse(_stream(job, queue, head, chat, n, len(prompt),
                                             opts["include_usage"]),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        texts, reasons, tokens = [""] * n, [None] * n, 0
        try:
            left = n
            while left:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                if isinstance(event, Text):
                    texts[event.index] += event.text
                elif isinstance(event, Done):
                    if event.error:
                        raise APIError(500, f"generation failed: {event.error}", None, None,
                                       "server_error")
                    reasons[event.index], tokens, left = event.finish_reason, \
                        tokens + event.tokens, left - 1
        finally:
            job.cancelled = True  # done or gone: its rows leave the batch
        usage = {"prompt_tokens": len(prompt), "completion_tokens": tokens,
                 "total_tokens": len(prompt) + tokens}
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "logprobs": None, "finish_reason": reasons[i]} for i in range(n)]
            return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                                 "usage": usage})
        choices = [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
                   for i in range(n)]
        return JSONResponse({**head, "object": "text_completion", "choices": choices,
                             "usage": usage})

    async def completions(request: Request):
        return await complete(request, chat=False)

    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card]})

    async def model(request: Request):
        if request.path_params["name"] != model_id:
            raise APIError(404, f"The model `{request.path_params['name']}` does not exist",
                           "model", "model_not_found")
        return JSONResponse(model_card)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": model_id, **engine.load()})

    async def page(request: Request):
        return HTMLResponse(_page())

    async def api_error(request: Request, exc: APIError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return exc.response(headers)

    async def http_error(request: Request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                        type=kind).response()

    async def server_error(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                        type="server_error").response()

    routes = [
        Route("/", page), Route("/health", health), Route("/v1/models", models),
        Route("/v1/models/{name:path}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        APIError: api_error, HTTPException: http_error, Exception: server_error})


async def _stream(job: Job, queue: asyncio.Queue, head: dict, chat: bool, n: int,
                  prompt_tokens: int, include_usage: bool):
    """The server-sent events of a streamed completion."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, **extra) -> str:
        return "data: " + json.dumps({**head, "object": kind, "choices": choices, **extra}) \
            + "\n\n"

    def choice(index: int, text: str | None, reason: str | None, role: bool = False) -> dict:
        if not chat:
            return {"index": index, "text": text or "", "logprobs": None,
                    "finish_reason": reason}
        delta = {"role": "assistant", "content": ""} if role else (
            {"content": text} if text is not None else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    tokens, left = 0, n
    try:
        if chat:
            for i in range(n):
                yield chunk([choice(i, None, None, role=True)])
        while left:
            event = await queue.get()
            if isinstance(event, Text):
                yield chunk([choice(event.index, event.text, None)])
            elif isinstance(event, Done):
                left -= 1
                tokens += event.tokens
                if event.error:
                    body = {"error": {"message": f"generation failed: {event.error}",
                                      "type": "server_error", "param": None, "code": None}}
                    yield "data: " + json.dumps(body) + "\n\n"
                    return
                yield chunk([choice(event.index, None, event.finish_reason)])
        if include_usage:
            yield chunk([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                   "total_tokens": prompt_tokens + tokens})
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # finished, or the client went away: leave the batch


# ---- running it -----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Runs ``app`` with uvicorn on a background thread; yields its base URL
    (``http://host:port``) and stops it on exit. For tests, benchmarks and notebooks."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="gristmill-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(model, tokenizer, model_id: str, *, host: str = SERVE["host"],
          port: int = SERVE["port"], max_batch: int = SERVE["max_batch"],
          max_queue: int = SERVE["max_queue"]) -> None:
    """Serves ``model`` until interrupted (see the module's doc)."""
    import uvicorn

    engine = BatchEngine(model, tokenizer, max_batch=max_batch, max_queue=max_queue).start()
    try:
        uvicorn.run(create_app(engine, tokenizer, model_id), host=host, port=port,
                    log_level="info")
    finally:
        engine.stop()
