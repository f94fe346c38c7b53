"""gristmill serve: the official openai client against a live local server on a tiny model.

Completions and chat equal one-at-a-time greedy decoding (sample.py's), also when many clients
ask at once (continuous batching); streaming, stop strings, n and seeds; a client that goes
away mid-stream; bad requests get OpenAI's error shape; a full queue answers 503.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from gristmill.batching import BatchEngine, Job
from gristmill.model import GPT, GPTConfig
from gristmill.prompts import chat_prompt_ids
from gristmill.sample import SamplingConfig, generate, sample_text
from gristmill.serve import create_app, read_request, running_server
from hypothesis import given, settings
from hypothesis import strategies as st
from text_shards import byte_tokenizer

torch.set_num_threads(1)
MODEL = "tiny-test"
PROMPTS = ["The quick brown fox", "Hello", "ROMEO: ", "a", "Once upon a time, in a land",
           "1 2 3 4", "zzz", "What is", "GPT", "x y", "To be or not", "Q"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=256, vocab_size=257)).eval()
    with torch.no_grad():  # a wider init than GPT-2's: varied greedy text, not one repeated byte
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def engine(model, tok):
    e = BatchEngine(model, tok, max_batch=8, max_queue=16).start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def server(engine, tok):
    with running_server(create_app(engine, tok, MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)


def alone(model, tok, prompt: str, **kw) -> str:
    return sample_text(model, [prompt], tokenizer=tok, **kw)[0]


def test_completion_equals_greedy_decoding(client, model, tok):
    r = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=20,
                                  temperature=0)
    want = alone(model, tok, "The quick brown fox", temperature=0, max_new_tokens=20)
    assert r.choices[0].text == want and len(set(want)) > 3
    assert r.usage.prompt_tokens == len("The quick brown fox")
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20


def test_chat_uses_the_prompt_format(client, model, tok):
    messages = [{"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15,
                                       temperature=0)
    ids = chat_prompt_ids(tok, messages)
    out = generate(model, [ids], temperature=0, max_new_tokens=15, eot_token=tok.eot_token)[0]
    want = tok.decode_bytes([t for t in out if t != tok.eot_token]).decode("utf-8", "replace")
    assert r.choices[0].message.content == want
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids)


def test_streaming_gives_the_same_text(client):
    kw = {"model": MODEL, "prompt": "Hello", "max_tokens": 25, "temperature": 0}
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 25
    chat = client.chat.completions.create(model=MODEL, stream=True, max_tokens=10, temperature=0,
                                          messages=[{"role": "user", "content": "Hi"}])
    deltas = [c.choices[0].delta for c in chat]
    assert deltas[0].role == "assistant"
    plain = client.chat.completions.create(model=MODEL, max_tokens=10, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
    assert "".join(d.content or "" for d in deltas) == plain.choices[0].message.content


def test_stop_strings(client, model, tok):
    full = alone(model, tok, "ROMEO: ", temperature=0, max_new_tokens=30)
    stop = next(ch for ch in full[3:] if ch.isascii() and ch.isprintable())
    cut = full[: full.index(stop)]
    r = client.completions.create(model=MODEL, prompt="ROMEO: ", max_tokens=30, temperature=0,
                                  stop=[stop, "\x00never"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="ROMEO: ", max_tokens=30,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_n_and_seed(client, model, tok):
    kw = {"model": MODEL, "prompt": "Once", "max_tokens": 12, "temperature": 1.0, "n": 3,
          "seed": 7}
    a = [c.text for c in client.completions.create(**kw).choices]
    b = [c.text for c in client.completions.create(**kw).choices]
    assert a == b and len(a) == 3 and len(set(a)) > 1
    for i in range(3):  # choice i is what sample.py draws with seed + i
        assert a[i] == alone(model, tok, "Once", temperature=1.0, max_new_tokens=12, seed=7 + i)
    c = [c.text for c in client.completions.create(**{**kw, "seed": 8}).choices]
    assert c != a


def test_concurrent_clients_equal_one_at_a_time(client, engine, model, tok):
    def ask(i):
        r = client.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=10 + 3 * i,
                                      temperature=0)
        return r.choices[0].text

    steps = engine.steps
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(ask, range(len(PROMPTS))))
    want = [alone(model, tok, p, temperature=0, max_new_tokens=10 + 3 * i)
            for i, p in enumerate(PROMPTS)]
    assert got == want
    # batched: far fewer steps than the tokens generated one request at a time
    assert engine.steps - steps < sum(10 + 3 * i for i in range(len(PROMPTS)))


def test_client_leaving_mid_stream(server, client, engine):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = [next(lines) for _ in range(3)]
            assert first[0].startswith("data: ")
    # the server lives on, and the abandoned rows leave the batch
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    deadline = time.monotonic() + 20
    while engine.load()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.load() == {"running": 0, "waiting": 0}


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests(server, client):
    url = server + "/v1/completions"
    ok = {"model": MODEL, "prompt": "hi", "max_tokens": 3}
    with httpx.Client(timeout=30) as http:
        _error(http.post(url, content=b"{not json"), 400)
        _error(http.post(url, content=b"[1, 2]"), 400)
        assert _error(http.post(url, json={**ok, "model": "gpt-9"}), 404)["code"] == \
            "model_not_found"
        assert _error(http.post(url, json={**ok, "max_tokens": -1}), 400)["param"] == "max_tokens"
        assert _error(http.post(url, json={**ok, "prompt": "x" * 500}), 400)["code"] == \
            "context_length_exceeded"
        _error(http.post(url, json={**ok, "max_tokens": 1000}), 400)
        _error(http.post(url, json={**ok, "temperature": "hot"}), 400)
        _error(http.post(url, json={**ok, "n": 99}), 400)
        _error(http.post(url, json={**ok, "stop": [1]}), 400)
        _error(http.post(url, json={**ok, "prompt": [999999]}), 400)
        _error(http.post(server + "/v1/chat/completions",
                         json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
               400)
        _error(http.get(server + "/v1/nothing"), 404)
        _error(http.get(url), 405)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=-5)
    assert client.completions.create(**ok).choices[0].text is not None  # still serving


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with httpx.Client(timeout=30) as http:
        health = http.get(server + "/health").json()
        assert health["status"] == "ok"
        page = http.get(server + "/")
        assert page.status_code == 200 and "/v1/chat/completions" in page.text


def test_queue_full_answers_503(model, tok):
    engine = BatchEngine(model, tok, max_batch=1, max_queue=1)  # not started: jobs wait
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0}
    with running_server(create_app(engine, tok, MODEL)) as url, httpx.Client(timeout=30) as http:
        waiting = threading.Thread(target=http.post, args=(url + "/v1/completions",),
                                   kwargs={"json": body})
        waiting.start()
        deadline = time.monotonic() + 10
        while engine.load()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = http.post(url + "/v1/completions", json=body)
        assert _error(r, 503)["code"] == "queue_full" and r.headers["retry-after"]
        engine.start()  # the waiting request is then served
        waiting.join(timeout=30)
        assert http.post(url + "/v1/completions", json=body).status_code == 200
    engine.stop()


def test_engine_refuses_what_cannot_fit(model, tok):
    engine = BatchEngine(model, tok, max_batch=2)
    with pytest.raises(ValueError, match="context"):
        engine.submit(Job([1] * 250, [SamplingConfig(max_new_tokens=20)], print))
    with pytest.raises(ValueError, match="at most 2"):
        engine.submit(Job([1], [SamplingConfig(max_new_tokens=2)] * 3, print))


def test_decode_head_equals_the_models(model, tok):
    # A decoding step's rows on CPU take the head's W @ h.T path; the reference is nn.Linear's.
    hidden = torch.randn(5, model.config.n_embd)
    with torch.no_grad():
        fast = model.head_logits(hidden)
        ref = torch.nn.functional.linear(hidden, model.lm_head.weight)[:, :257]
    assert fast.shape == ref.shape == (5, 257)
    torch.testing.assert_close(fast, ref)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8),
       st.booleans())
def test_request_parser_accepts_or_refuses_cleanly(tok, body, chat):
    """Any JSON value as a body, or as any one field of a valid one: parsed, or an APIError
    with a 4xx status, never another exception."""
    from gristmill.serve import APIError

    base = {"model": MODEL, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    for candidate in [body] + [{**base, k: body} for k in
                               ("prompt", "messages", "max_tokens", "temperature", "top_p",
                                "stop", "n", "seed", "stream", "stream_options")]:
        try:
            prompt, configs, opts = read_request(json.loads(json.dumps(candidate)), chat, MODEL,
                                                 tok, 256, 8)
        except APIError as e:
            assert 400 <= e.status < 500 and e.message
        else:
            assert prompt and configs and isinstance(opts["stream"], bool)


def test_cli_serve_with_int8(tmp_path, model, tok):
    """`gristmill serve RUN --quantize int8` in its own process answers the openai client."""
    import os
    import subprocess
    import sys

    from gristmill.checkpoint import save_weights
    from gristmill.serve import free_port

    (tmp_path / "run").mkdir()
    save_weights(model, tmp_path / "run" / "model.safetensors")
    tok.save(tmp_path / "tok")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gristmill", "serve", str(tmp_path / "run"),
                             "-t", str(tmp_path / "tok"), "--port", str(port), "--quantize",
                             "int8", "--model-name", "cli"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="cli", max_tokens=5, temperature=0,
                                      messages=[{"role": "user", "content": "Hi"}])
        assert r.usage.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
