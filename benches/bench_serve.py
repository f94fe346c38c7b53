"""Serving throughput: gristmill's continuous batching vs transformers' generate one request at
a time, behind the same HTTP server; and what int8 weights change.

One briefly trained GPT-2-shaped model (GPT-2 tokenizer, trained for a few steps on the bench
corpus so its loss means something), saved in the Hugging Face layout so transformers serves
the very same weights. Three engines behind ``gristmill.serve.create_app``, each on a live
local server in its own process (this script with ``--worker``; the same uvicorn settings and
torch threads for all three), so the clients' work is not counted against any engine:

- ``gristmill``: :class:`gristmill.batching.BatchEngine` (requests join and leave the batch
  between decoding steps), float32 on CPU;
- ``gristmill int8``: the same with ``quantize(model, "int8")``;
- ``transformers generate``: a worker that runs ``GPT2LMHeadModel.generate`` for one request
  at a time (greedy, KV cache), the way a plain wrapper serves a model.

C concurrent clients (1, 8, 32) each send requests (a fixed-length prompt, greedy, ``max_tokens``
new tokens, no end-of-text stop for the baseline) through the ``openai`` client from this
process; requests/s and completion tokens/s are over the wall time of the whole round; the
three servers run side by side and take turns at each level, so a busy machine's load swings
hit them alike. ``--threads N`` sets torch's threads in every server (default: half the
cores, the clients get the rest): with more, on a busy machine OpenMP's threads make every
small op wait for a descheduled one, which hits ``generate``'s many small ops hardest (its
tokens/s swung from 126 to 8 between runs with two threads on 2 cores). Before
that, the quantization table: weight memory, single-request decoding tokens/s, validation loss
and bits per byte of float32 against int8 on held-out corpus text.

    python benches/bench_serve.py [--size small|full]

small (default here; CI): 4 layers x 256 trained 15 steps, 32 new tokens, 2 requests per
client. full: 6 layers x 512 trained 150 steps, 64 new tokens, 3 requests per client.
"""

from __future__ import annotations

import copy
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import torch
from common import load_corpus, parser, report
from gristmill.batching import BatchEngine, Done, Text
from gristmill.checkpoint import from_hf, save_hf
from gristmill.eval import evaluate
from gristmill.model import GPT, GPTConfig
from gristmill.quantize import quantize, weight_bytes
from gristmill.sample import generate
from gristmill.serve import create_app, free_port
from gristmill.tokenizer import Tokenizer

ENGINES = {"hf": "transformers generate (one at a time)", "float32": "gristmill batching",
           "int8": "gristmill batching int8"}


class SerialHF:
    """transformers' generate behind the server's engine interface: one request at a time."""

    def __init__(self, hf, tokenizer, block_size: int, max_queue: int = 1000):
        self.hf, self.tok, self.block_size = hf, tokenizer, block_size
        self.max_batch, self.jobs = 64, queue.Queue(max_queue)
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, job) -> None:
        self.jobs.put_nowait(job)

    def load(self) -> dict:
        return {"running": 0, "waiting": self.jobs.qsize()}

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            ids = torch.tensor([job.prompt])
            for i, cfg in enumerate(job.configs):
                with torch.no_grad():
                    out = self.hf.generate(ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=cfg.max_new_tokens,
                                           min_new_tokens=cfg.max_new_tokens, do_sample=False,
                                           pad_token_id=0)
                new = out[0, ids.shape[1]:].tolist()
                events = [Text(i, self.tok.decode(new)), Done(i, "length", len(new))]
                if job.channel is not None:  # the server's event loop, as BatchEngine does
                    job.channel.send([(job, e) for e in events])
                else:
                    for e in events:
                        job.emit(e)


def train_briefly(model: GPT, tokens: np.ndarray, steps: int, seq: int) -> float:
    opt = model.configure_optimizer(lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - seq - 1, (8,), generator=gen).tolist()
        batch = torch.stack([torch.as_tensor(tokens[s: s + seq + 1]) for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def decode_speed(models: dict, prompt: list[int], new: int, rounds: int = 5) -> dict:
    """Single-request greedy decoding tokens/s of each model: the best of ``rounds`` runs,
    taken in turn (a busy machine's noise hits both alike)."""
    best = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            generate(model, [prompt], temperature=0, max_new_tokens=new)
            best[name] = max(best[name], new / (time.perf_counter() - t0))
    return best


def load_round(url: str, model_id: str, prompt: list[int], clients: int, per_client: int,
               new: int) -> tuple[float, int]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)

    def one(_):
        tokens = 0
        for _ in range(per_client):
            r = client.completions.create(model=model_id, prompt=prompt, max_tokens=new,
                                          temperature=0)
            tokens += r.usage.completion_tokens
        return tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(clients)))
    return time.perf_counter() - t0, tokens


def worker(engine: str, weights: str, port: int) -> None:
    """One server: ``engine`` over the HF folder ``weights``, on ``port``, until killed."""
    import transformers
    import uvicorn

    tok = Tokenizer.from_name("gpt2")
    if engine == "hf":
        hf = transformers.GPT2LMHeadModel.from_pretrained(weights).eval()
        hf.generation_config.eos_token_id = None
        server = SerialHF(hf, tok, hf.config.n_positions)
    else:
        model = from_hf(weights).eval()
        server = BatchEngine(quantize(model, "int8") if engine == "int8" else model, tok,
                             32, 1000).start()
    uvicorn.run(create_app(server, tok, "bench"), host="127.0.0.1", port=port,
                log_level="warning")


def start_server(engine: str, weights: str, threads: int | None, procs: list) -> str:
    """Starts a :func:`worker` process; its URL once it answers ``/health``."""
    import httpx

    port = free_port()
    cmd = [sys.executable, __file__, "--worker", engine, "--weights", weights,
           "--port", str(port)] + (["--threads", str(threads)] if threads else [])
    procs.append(subprocess.Popen(cmd))
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if procs[-1].poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {engine} server did not start")
        time.sleep(0.2)


def main() -> None:
    p = parser("serve", __doc__)
    p.set_defaults(size="small")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--requests-per-client", type=int, default=None,
                   help="requests each client sends in turn (default: 2 small, 3 full); more "
                   "make a steadier figure")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of each server (default: half the cores) and "
                   "of this process's quantization table (default: torch's own)")
    p.add_argument("--worker", choices=list(ENGINES), help="(internal) run one server")
    p.add_argument("--weights", help="(internal) the worker's HF folder")
    p.add_argument("--port", type=int, help="(internal) the worker's port")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.weights, args.port)
        return

    full = args.size == "full"
    shape = ({"n_layer": 6, "n_head": 8, "n_embd": 512} if full else
             {"n_layer": 4, "n_head": 4, "n_embd": 256})
    new, per_client, steps, seq = (64, 3, 150, 256) if full else (32, 2, 15, 64)
    per_client = args.requests_per_client or per_client
    tok = Tokenizer.from_name("gpt2")
    texts = load_corpus(4_000_000 if full else 500_000)
    ids = np.concatenate([tok.encode_ordinary(t) + [tok.eot_token] for t in texts])
    ids = ids.astype(np.int64)
    cut = int(len(ids) * 0.9)
    train, val = ids[:cut], ids[cut:][: 40_000 if full else 4_000]
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=tok.n_vocab, **shape))
    t0 = time.perf_counter()
    loss = train_briefly(model, train, steps, seq)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f}s: loss {loss:.2f}")
    model.eval()
    int8 = quantize(copy.deepcopy(model), "int8")
    prompt = train[:48].tolist()

    rows = []
    full_eval = evaluate(model, val, tok, batch_size=4, seq_len=256)
    speed = decode_speed({"float32": model, "int8": int8}, prompt, new)
    for name, m in [("float32", model), ("int8", int8)]:
        r = full_eval if m is model else evaluate(m, val, tok, batch_size=4, seq_len=256)
        rows.append({"weights": name, "MB": weight_bytes(m) / 1e6,
                     "decode tok/s": speed[name],
                     "val loss": r["loss"], "bits/byte": r["bits_per_byte"],
                     "bpb change %": round(100 * (r["bits_per_byte"] /
                                              full_eval["bits_per_byte"] - 1), 4)})
    meta = {"size": args.size, "model": shape, "new_tokens": new, "quantization": rows}
    report("serve-quantize", rows, list(rows[0]), args.out.with_name("serve-quantize.json"),
           {"size": args.size, "model": shape})

    serve_rows = []
    levels = [int(c) for c in args.clients.split(",")]
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    meta["server_threads"] = threads
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, d, eos_token_id=tok.eot_token)
        try:  # all three live at once, measured in turn at each level
            urls = {name: start_server(name, d, threads, procs) for name in ENGINES}
            for url in urls.values():
                load_round(url, "bench", prompt, 1, 1, 4)  # warm-up
            for clients in levels:
                for name, url in urls.items():
                    seconds, tokens = load_round(url, "bench", prompt, clients, per_client,
                                                 new)
                    serve_rows.append({"engine": ENGINES[name], "clients": clients,
                                       "requests/s": clients * per_client / seconds,
                                       "tokens/s": tokens / seconds, "seconds": seconds})
                    print(serve_rows[-1], flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    base = {r["clients"]: r["tokens/s"] for r in serve_rows if r["engine"].startswith("transf")}
    for r in serve_rows:
        r["x transformers"] = r["tokens/s"] / base[r["clients"]]
    report("serve", serve_rows, ["engine", "clients", "requests/s", "tokens/s", "x transformers",
                                 "seconds"], args.out, meta)


if __name__ == "__main__":
    main()
