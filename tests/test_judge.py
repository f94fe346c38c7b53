"""Judge scoring against a stub OpenAI-compatible server run by the test: the request the
book's ch. 7 sends, the reply parsed, retries, and every failure as one line naming the URL."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gristmill.judge import (
    JudgeError,
    chat_completions_url,
    judge_prompt,
    parse_score,
    score_responses,
)
from hypothesis import given
from hypothesis import strategies as st

RECORDS = [
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning.", "model_response": "The car is as fast as a bullet."},
    {"instruction": "What type of cloud is typically associated with thunderstorms?",
     "output": "The type of cloud typically associated with thunderstorms is cumulonimbus.",
     "model_response": "A cumulus cloud."},
    {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "",
     "output": "Jane Austen.", "model_response": "Jane Austen."},
]


class Stub:
    """A chat-completions server: ``replies`` are (status, body) answered in turn (the last
    one repeats); every request's path, headers and JSON body are kept."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers["Content-Length"])
                stub.requests.append((self.path, dict(self.headers),
                                      json.loads(self.rfile.read(n))))
                status, body = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def completion(text):
    return 200, {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": "stop"}]}


@pytest.fixture
def stub():
    servers = []

    def make(*replies):
        servers.append(Stub(replies))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_scores_with_the_book_s_prompt(stub):
    s = stub(completion("85"), completion("Score: 20/100"), completion("I cannot score that."))
    scores = score_responses(RECORDS, s.url + "/v1", "llama3", api_key="sk-test")
    assert scores == [85, 20, None]
    path, headers, body = s.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "llama3" and body["temperature"] == 0 and body["seed"] == 123
    prompt = body["messages"][0]["content"]
    assert prompt == judge_prompt(RECORDS[0])
    assert prompt.startswith("Given the input `Below is an instruction that describes a task. "
                             "Write a response that appropriately completes the request.\n\n"
                             "### Instruction:\nRewrite the sentence using a simile.\n\n"
                             "### Input:\nThe car is very fast.` and correct output `The car is "
                             "as fast as lightning.`, score the model response `The car is as "
                             "fast as a bullet.` on a scale from 0 to 100")
    assert prompt.endswith("Respond with the integer number only.")
    assert "### Input" not in s.requests[1][2]["messages"][0]["content"]
    assert score_responses(RECORDS[:1], s.url, "m") == [None]  # the last reply repeats
    assert "Authorization" not in s.requests[-1][1]


def test_busy_and_failing_servers_are_retried(stub):
    s = stub((503, "overloaded"), (429, "slow down"), completion("70"))
    assert score_responses(RECORDS[:1], s.url, "m", backoff=0) == [70]
    assert len(s.requests) == 3


@pytest.mark.parametrize("reply,expected", [
    ((404, {"error": {"message": "model 'llama9' not found"}}),
     r"/v1/chat/completions: the judge server answered HTTP 404: .*model 'llama9' not found"),
    ((500, "boom"), r"answered HTTP 500: boom"),
    ((200, "<html>"), r"the reply is not an OpenAI chat completion"),
    ((200, {"choices": []}), r"the reply is not an OpenAI chat completion"),
])
def test_error_replies_are_one_line_naming_the_url(stub, reply, expected):
    s = stub(reply)
    with pytest.raises(JudgeError, match=expected) as e:
        score_responses(RECORDS[:1], s.url, "llama9", retries=2, backoff=0)
    assert str(e.value).startswith(s.url) and "\n" not in str(e.value)


def test_an_unreachable_server_is_one_line_naming_the_url():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(JudgeError) as e:
        score_responses(RECORDS[:1], url, "m", retries=2, backoff=0, timeout=2)
    msg = str(e.value)
    assert msg.startswith(f"{url}/v1/chat/completions: cannot reach the judge server (")
    assert "after 2 tries" in msg and "\n" not in msg


@pytest.mark.parametrize("records,expected", [
    ([{"instruction": "x", "output": "y"}], "record 0: field 'model_response': expected a string, got missing"),
    ([RECORDS[0], {"instruction": 1, "output": "y", "model_response": "z"}],
     "record 1: field 'instruction': expected a string, got a int"),
    ([{**RECORDS[0], "input": 5}], "record 0: field 'input': expected a string"),
    (["text"], "record 0: expected an object"),
])
def test_bad_records_are_refused_before_any_request(records, expected):
    with pytest.raises(JudgeError, match=expected):
        score_responses(records, "http://127.0.0.1:9", "m")


@pytest.mark.parametrize("url,endpoint", [
    ("http://localhost:11434", "http://localhost:11434/v1/chat/completions"),
    ("http://localhost:11434/", "http://localhost:11434/v1/chat/completions"),
    ("https://api.example.com/v1", "https://api.example.com/v1/chat/completions"),
    ("http://h:1/v1/chat/completions", "http://h:1/v1/chat/completions"),
])
def test_endpoint_from_url(url, endpoint):
    assert chat_completions_url(url) == endpoint


def test_a_url_that_is_not_http_is_refused():
    with pytest.raises(JudgeError, match=r"judge URL 'localhost:11434': expected http://HOST"):
        chat_completions_url("localhost:11434")


@pytest.mark.parametrize("reply,score", [
    ("85", 85), ("85.", 85), (" 100\n", 100), ("0", 0), ("Score: 92/100", 92),
    ("I would rate this response 40 out of 100.", 40), ("7.5", None), ("-3", None),
    ("101", None), ("", None), ("no idea", None),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@given(st.text())
def test_parse_score_is_none_or_an_integer_in_the_reply(reply):
    score = parse_score(reply)
    assert score is None or (0 <= score <= 100 and str(score) in reply)


@given(st.integers(0, 100), st.text(alphabet=st.characters(blacklist_categories=("Nd",)),
                                    max_size=20))
def test_parse_score_finds_a_score_after_words(value, words):
    if words.endswith((".", "-")):
        words += " "
    assert parse_score(f"{words}{value}") == value
