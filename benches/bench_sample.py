"""Generation throughput: gristmill's KV-cached decoding vs transformers' generate.

The same random GPT-2 weights in both (built with transformers, imported into gristmill), the
same prompts, greedy decoding of a fixed number of new tokens (no end-of-text stop), at batch
1 and batch 8. The generated ids are checked identical before anything is timed. CPU in
float32; on a GPU both run in bfloat16.

    python benches/bench_sample.py [--size small|full]

full: gpt2 (124M), 64-token prompts, 128 new tokens. small: 2 layers, 4096 tokens, 32 new.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import torch
import transformers
from common import best_of, parser, report
from gristmill.model import from_hf
from gristmill.sample import generate


def main() -> None:
    p = parser("sample", __doc__)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.size == "small":
        shape = {"n_layer": 2, "n_head": 4, "n_embd": 128, "vocab_size": 4096}
        prompt_len, new, repeat = 16, 32, 2
    else:
        shape, prompt_len, new, repeat = {}, 64, 128, 3
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(**shape)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = from_hf(d).eval().to(device=device, dtype=dtype)
    hf = hf.to(device=device, dtype=dtype)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    def run_hf(ids):
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False)
        return out[:, ids.shape[1]:].tolist()

    def run_ours(ids):
        return generate(ours, ids.tolist(), temperature=0, max_new_tokens=new)

    def sync(fn):
        def timed():
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return result
        return timed

    rows = []
    for batch in (1, 8):
        ids = torch.randint(0, hf_cfg.vocab_size, (batch, prompt_len),
                            generator=torch.Generator().manual_seed(batch)).to(device)
        same = run_ours(ids) == run_hf(ids)
        if not same and device.type == "cpu":
            raise SystemExit("gristmill's greedy ids differ from transformers'")
        base = None
        for tool, fn in [("transformers generate", lambda ids=ids: run_hf(ids)),
                         ("gristmill generate", lambda ids=ids: run_ours(ids))]:
            seconds, _ = best_of(sync(fn), repeat)
            tok_s = batch * new / seconds
            base = base or tok_s
            rows.append({"tool": tool, "batch": batch, "seconds": seconds, "tokens/s": tok_s,
                         "vs transformers": f"{tok_s / base:.2f}x", "same ids": same})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {name}; GPT-2 {hf_cfg.n_layer}L/{hf_cfg.n_embd}d, {str(dtype)[6:]}, prompt "
          f"{prompt_len} tokens, {new} new tokens, greedy, best of {repeat}\n")
    report("sample", rows, ["tool", "batch", "seconds", "tokens/s", "vs transformers",
                            "same ids"], args.out,
           {"device": name, "dtype": str(dtype), "prompt_tokens": prompt_len, "new_tokens": new,
            "model": {"n_layer": hf_cfg.n_layer, "n_embd": hf_cfg.n_embd},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})


if __name__ == "__main__":
    main()
