"""gristmill.batching without HTTP: prompts that join at the same step are prefilled together
(right-padded) and still decode as one-at-a-time greedy decoding does; a channel gets one
hand-over per step; a job whose prefill fails fails alone."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from gristmill.batching import BatchEngine, Done, Job, Text
from gristmill.model import GPT, GPTConfig
from gristmill.sample import SamplingConfig, generate
from text_shards import byte_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def wide_model(**layout) -> GPT:
    torch.manual_seed(1)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=257,
                      **layout)).eval()
    with torch.no_grad():  # a wide init: varied greedy text
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def model():
    return wide_model()


class Collect:
    """A job's events, and an event set when all its choices are done."""

    def __init__(self, n: int = 1):
        self.texts, self.done, self.left = [""] * n, [None] * n, n
        self.finished = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Text):
            self.texts[event.index] += event.text
        elif isinstance(event, Done):
            self.done[event.index] = event
            self.left -= 1
            if not self.left:
                self.finished.set()


def greedy_alone(model, tok, prompt: list[int], new: int) -> str:
    out = generate(model, [prompt], temperature=0, max_new_tokens=new,
                   eot_token=tok.eot_token)[0]
    return tok.decode_bytes([t for t in out if t != tok.eot_token]).decode("utf-8", "replace")


def run_together(engine: BatchEngine, jobs: list[Job]) -> None:
    """Queues ``jobs`` before the engine starts, so they join at the same step."""
    for job in jobs:
        engine.submit(job)
    engine.start()
    try:
        for job in jobs:
            assert job.emit.finished.wait(60)
    finally:
        engine.stop()


@pytest.mark.parametrize("layout", [{}, {"position": "rotary", "norm": "rmsnorm",
                                         "qk_norm": True, "logit_softcap": 15.0,
                                         "tie_embeddings": False, "activation": "relu2"}])
def test_prompts_joining_together_equal_one_at_a_time(tok, layout):
    """Right-padded prompts of different lengths, prefilled together, then decoded together:
    the same text as each alone (GPT-2's layout and the layout options)."""
    model = wide_model(**layout)
    prompts = [tok.encode(p) for p in ("a", "Hello there", "The quick brown fox jumps",
                                       "1 2 3", "zz", "Once upon a time, long ago")]
    new = [9, 14, 5, 20, 11, 7]
    engine = BatchEngine(model, tok, max_batch=8)
    jobs = [Job(p, [SamplingConfig(temperature=0, max_new_tokens=n)], Collect())
            for p, n in zip(prompts, new)]
    run_together(engine, jobs)
    assert engine.steps < sum(new)  # decoded together
    for job, p, n in zip(jobs, prompts, new):
        assert job.emit.texts[0] == greedy_alone(model, tok, p, n)
        assert job.emit.done[0].tokens <= n


def test_choices_and_seeds_in_a_joint_prefill(model, tok):
    """n choices copy their job's prefilled slot; seeded sampling equals sample.py's."""
    engine = BatchEngine(model, tok, max_batch=8)
    short, long_ = tok.encode("Hi"), tok.encode("ROMEO: what light")
    cfgs = [SamplingConfig(temperature=1.0, max_new_tokens=10, seed=5 + i) for i in range(3)]
    jobs = [Job(long_, [SamplingConfig(temperature=0, max_new_tokens=10)], Collect()),
            Job(short, cfgs, Collect(3))]
    run_together(engine, jobs)
    assert jobs[0].emit.texts[0] == greedy_alone(model, tok, long_, 10)
    for i in range(3):
        out = generate(model, [short], temperature=1.0, max_new_tokens=10, seed=5 + i,
                       eot_token=tok.eot_token)[0]
        want = tok.decode_bytes([t for t in out if t != tok.eot_token]).decode("utf-8",
                                                                                "replace")
        assert jobs[1].emit.texts[i] == want


def test_a_channel_gets_one_hand_over_per_step(model, tok):
    sends: list[int] = []

    class Channel:
        def send(self, events):
            sends.append(len(events))
            for job, event in events:
                job.emit(event)

    channel = Channel()
    engine = BatchEngine(model, tok, max_batch=4)
    jobs = [Job(tok.encode(p), [SamplingConfig(temperature=0, max_new_tokens=12)], Collect(),
                channel) for p in ("abc", "hello", "x", "What is")]
    run_together(engine, jobs)
    for job in jobs:
        assert job.emit.texts[0] == greedy_alone(model, tok, job.prompt, 12)
    assert len(sends) <= engine.steps + 1 and max(sends) > 1


def test_a_failing_prefill_fails_its_job_alone(model, tok):
    engine = BatchEngine(model, tok, max_batch=4)
    bad = Job([10**6], [SamplingConfig(temperature=0, max_new_tokens=3)], Collect())  # no such id
    good = Job(tok.encode("hello"), [SamplingConfig(temperature=0, max_new_tokens=6)], Collect())
    run_together(engine, [bad, good])
    assert bad.emit.done[0].error and bad.emit.done[0].finish_reason == "error"
    assert good.emit.texts[0] == greedy_alone(model, tok, good.prompt, 6)


def test_a_job_not_streamed_gets_its_text_at_the_end(model, tok):
    events: list[object] = []
    done = Collect()

    def emit(event) -> None:
        events.append(event)
        done(event)

    emit.finished = done.finished
    engine = BatchEngine(model, tok, max_batch=2)
    prompt = tok.encode("ROMEO: ")
    job = Job(prompt, [SamplingConfig(temperature=0, max_new_tokens=15)], emit, stream=False)
    run_together(engine, [job])
    assert [type(e) for e in events] == [Text, Done]
    assert events[0].text == greedy_alone(model, tok, prompt, 15)
