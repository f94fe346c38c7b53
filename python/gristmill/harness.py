"""gristmill checkpoints as an lm-evaluation-harness model: every harness task runs on them.

    lm_eval --model gristmill --model_args pretrained=runs/gpt2 --tasks hellaswag

``pip install 'gristmill[eval]'`` declares the model under the harness's ``lm_eval.models``
entry point, which harness releases with plugin discovery read. With a release that predates
it (0.4.13 and older), run the harness through this module, which registers the model first
and then hands the same arguments to the harness's command line::

    python -m gristmill.harness run --model gristmill --model_args pretrained=runs/gpt2 ...

or from Python: ``lm_eval.simple_evaluate(model=GristmillLM("runs/gpt2"), tasks=[...])``.

The harness turns every request into a context and a continuation as its ``hf`` model does
(:class:`lm_eval.api.model.TemplateLM`: trailing spaces of the context move to the
continuation, the pair is encoded whole and split); requests that share a context, as the
choices of a multiple-choice question do, are scored together by
:func:`gristmill.eval.score_choices`: the context runs once and the continuations share its
KV cache. Inputs longer than the window lose the start of their context, as with ``hf``.
"""

from __future__ import annotations

import json
import sys

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from gristmill.defaults import EVAL
from gristmill.eval import score_choices
from gristmill.progress import progress_bar
from gristmill.sample import SamplingConfig, generate, prepare_model

__all__ = ["GristmillLM", "register"]


def _resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _resolve_dtype(dtype, device: str):
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ValueError(f"model_args dtype: expected auto, float32, bfloat16 or float16, got "
                         f"{dtype!r}")
    return names[dtype]


class GristmillLM(TemplateLM):
    """A gristmill checkpoint (a checkpoint folder, a training ``out_dir`` or a HF GPT-2
    folder) as a harness model.

    Args:
        pretrained: the checkpoint.
        tokenizer: default the checkpoint's (see :func:`gristmill.checkpoint.tokenizer_for`).
        device, dtype: ``auto``: CUDA in bfloat16 when there is one, else CPU in float32.
        batch_size: prompts generated together (``generate_until``); an integer or ``auto``.
        batch_tokens: tokens per forward pass when scoring log-likelihoods.
        max_length: the window (default the model's block_size).
        max_gen_toks: default number of tokens ``generate_until`` may add (the harness's 256).
    """

    def __init__(self, pretrained: str, tokenizer=None, device: str = "auto", dtype="auto",
                 batch_size=16, batch_tokens: int = EVAL["batch_tokens"],
                 max_length: int | None = None, max_gen_toks: int = 256, **unused):
        super().__init__()
        unused.pop("max_batch_size", None)  # the harness passes these to every model
        unused.pop("trust_remote_code", None)
        if unused:
            raise ValueError(f"gristmill model_args: unknown {', '.join(sorted(unused))}; known: "
                             "pretrained, tokenizer, device, dtype, batch_size, batch_tokens, "
                             "max_length, max_gen_toks")
        dev = _resolve_device(device)
        self.model, self.tok = prepare_model(pretrained, tokenizer, dev,
                                             _resolve_dtype(dtype, dev))
        self._device = torch.device(dev)
        self._batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.batch_tokens = int(batch_tokens)
        self._max_length = int(max_length or self.model.config.block_size)
        self._max_gen_toks = int(max_gen_toks)

    # ---- what the harness asks of a model ----

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_token

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string, allowed_special="all")

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode([t for t in tokens if t != self.tok.eot_token])

    # ---- scoring ----

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """``(log-likelihood, greedy)`` of each ``(key, context ids, continuation ids)``.
        As ``hf``: context + continuation keep their last ``max_length + 1`` tokens."""
        keep = self.max_length + 1
        groups: dict[tuple, list[int]] = {}
        for n, (_, ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError("a continuation that encodes to no tokens cannot be scored")
            if len(cont) >= keep:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the "
                                 f"window of {self.max_length}")
            ctx = list(ctx)[max(0, len(ctx) + len(cont) - keep):]
            groups.setdefault(tuple(ctx), []).append(n)
        keys = list(groups)
        items = [(list(k), [list(requests[n][2]) for n in groups[k]]) for k in keys]
        scores = score_choices(self.model, items, batch_tokens=self.batch_tokens,
                               progress=not disable_tqdm, desc="loglikelihood")
        out: list = [None] * len(requests)
        for key, sc in zip(keys, scores):
            for n, (logp, greedy) in zip(groups[key], sc):
                out[n] = (logp, greedy)
                if requests[n][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[n][0], out[n])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the model's length, each
        conditioned on the tokens before it (the first on end-of-text), as ``hf``."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for w in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, *w))
                owner.append(n)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, scores):
            totals[n] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations decoded with gristmill's sampler (greedy unless ``do_sample``), cut at
        the first stop string (``until``, and end-of-text)."""
        out: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str),
                              []).append(n)
        bar = progress_bar(not disable_tqdm, desc="generate_until", total=len(requests))
        for key, members in groups.items():
            kw = dict(json.loads(key))
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            eot_text = self.tok.decode([self.eot_token_id])
            if eot_text not in until:
                until.append(eot_text)
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            sampled = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0 if sampled else 0.0))
            settings = {"temperature": temperature if sampled else 0.0}
            if sampled:
                settings.update({k: type_(kw[k]) for k, type_ in (("top_p", float),
                                                                   ("top_k", int)) if k in kw})
            room = self.max_length - max_new
            for i in range(0, len(members), self.batch_size):
                chunk = members[i: i + self.batch_size]
                prompts = []
                for n in chunk:
                    ids = self.tok_encode(requests[n].args[0]) or [self.eot_token_id]
                    prompts.append(ids[-room:] if room > 0 else ids[-1:])
                steps = max(1, min(max_new, self.max_length - max(map(len, prompts))))
                cfg = SamplingConfig(max_new_tokens=steps, stop_strings=tuple(until),
                                     **settings)
                outs = generate(self.model, prompts, cfg, eot_token=self.eot_token_id,
                                token_bytes=self.tok.decode_single_token_bytes)
                for n, ids in zip(chunk, outs):
                    text = self.tok_decode(ids)
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
                bar.update(len(chunk))
        bar.close()
        return out


def register() -> None:
    """Makes ``--model gristmill`` known to this process's harness. Idempotent; an entry
    point the harness found first is left as it is (it names this same class)."""
    # Fill the registry first: the harness imports its models only when the registry is empty.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import MODEL_REGISTRY, register_model

    if "gristmill" not in MODEL_REGISTRY:
        register_model("gristmill")(GristmillLM)


if __name__ != "__main__":  # run as a script, the module imports itself (below) instead
    register()


def main(argv=None) -> None:
    """The harness's command line with ``--model gristmill`` available."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    from gristmill.harness import main as _main  # the registered class is gristmill.harness's

    _main()
