"""`gristmill chat` and :class:`gristmill.chat.Chat`: replies streamed and ended at
end-of-text, multi-turn prompts in the run's template, oldest turns dropped when the context
is full, /reset and /quit, a system message; the command driven through a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import gristmill.chat as chat_module
from gristmill.chat import Chat, ChatError, run_template
from gristmill.checkpoint import save_checkpoint, save_weights
from gristmill.model import GPT, GPTConfig
from gristmill.prompts import chat_prompt_ids
from gristmill.sample import SamplingConfig
from text_shards import byte_tokenizer

torch.set_num_threads(1)
QUESTION, ANSWER = "Say hi.", "Hello there."
GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A tiny model trained until it answers QUESTION with ANSWER then end-of-text, as an
    instruction-tuned model does (its context, 256 bytes, fills in a few turns)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_preset("tiny", vocab_size=257, block_size=256))
    ids = chat_prompt_ids(tok, [{"role": "user", "content": QUESTION}])
    ids = ids + tok.encode_ordinary(ANSWER) + [tok.eot_token]
    x = torch.tensor([ids])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def run_dir(model, tok, tmp_path_factory):
    """The model as a checkpoint folder (weights + tokenizer, no recorded template)."""
    d = tmp_path_factory.mktemp("run")
    save_weights(model, d / "model.safetensors")
    tok.save(d / "tokenizer")
    return d


def test_a_reply_streams_and_stops_at_end_of_text(model, tok):
    chat = Chat(model, tok, GREEDY)
    pieces = list(chat.reply(QUESTION))
    assert len(pieces) > 1 and "".join(pieces) == ANSWER
    assert chat.messages == [{"role": "user", "content": QUESTION},
                             {"role": "assistant", "content": ANSWER}]
    assert chat.dropped == 0 and chat.shortened is None


def _prompts_seen(monkeypatch):
    seen = []
    real = chat_module.generate_steps

    def spy(model, prompts, cfg, **kw):
        seen.append((list(prompts[0]), cfg.max_new_tokens))
        return real(model, prompts, cfg, **kw)

    monkeypatch.setattr(chat_module, "generate_steps", spy)
    return seen


def test_turns_build_on_each_other_in_the_template(model, tok, monkeypatch):
    seen = _prompts_seen(monkeypatch)
    chat = Chat(model, tok, SamplingConfig(temperature=0, max_new_tokens=8), system="Be brief.")
    first = "".join(chat.reply(QUESTION))
    "".join(chat.reply("Again."))
    conversation = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": first},
                    {"role": "user", "content": "Again."}]
    assert seen[0][0] == chat_prompt_ids(tok, conversation[:2])
    assert seen[1][0] == chat_prompt_ids(tok, conversation)
    assert tok.decode(seen[1][0]).startswith("Be brief.\n\n### Instruction:\nSay hi.")
    chat.reset()
    assert chat.messages == []
    "".join(chat.reply(QUESTION))
    assert seen[2][0] == seen[0][0]


def test_oldest_turns_are_dropped_when_the_context_is_full(model, tok, monkeypatch):
    seen = _prompts_seen(monkeypatch)
    chat = Chat(model, tok, SamplingConfig(temperature=0, max_new_tokens=40))
    for i in range(6):
        "".join(chat.reply(f"Question number {i}?"))
        assert len(seen[-1][0]) + 40 <= 256
    assert chat.messages[0]["content"] != "Question number 0?"
    assert chat.messages[-2]["content"] == "Question number 5?"
    dropped_some = chat.dropped
    assert dropped_some >= 1
    # a message that fits only without room for a whole reply: the reply is shortened
    long = "x" * 100
    "".join(chat.reply(long))
    assert chat.messages[0]["content"] == long and chat.shortened == seen[-1][1] < 40
    # one that cannot fit at all: refused, the conversation kept as it was
    before = list(chat.messages)
    with pytest.raises(ChatError, match=r"the message needs \d+ tokens with its prompt; the "
                       r"model's context holds 256: shorten it"):
        chat.reply("y" * 300)
    assert chat.messages == before


def test_a_stop_string_or_the_next_turn_s_header_ends_a_reply(model, tok):
    chat = Chat(model, tok, SamplingConfig(temperature=0, max_new_tokens=24,
                                           stop_strings=("there",)))
    assert "".join(chat.reply(QUESTION)) == "Hello "
    assert "\n\n### Instruction:\n" in chat.config.stop_strings


def test_run_template(run_dir, model, tok, tmp_path):
    assert run_template(run_dir) == ("alpaca", False)
    out = tmp_path / "run"
    out.mkdir()
    ckpt = save_checkpoint(out, 10, model, model.state_dict(), {}, {"step": 10},
                           {"finetune": {"template": "alpaca"}}, tok)
    assert run_template(out) == ("alpaca", True)
    meta = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**meta, "template": "chatml"}))
    with pytest.raises(ChatError, match=r"config.json: template is 'chatml'; expected one of "
                       r"alpaca"):
        run_template(out)
    with pytest.raises(ChatError, match="template 'x'"):
        Chat(model, tok, template="x")


def _chat(run_dir, stdin, *flags):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "python"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "gristmill", "chat", str(run_dir),
                           "--temperature", "0", "-n", "24", *flags],
                          input=stdin, capture_output=True, text=True, timeout=120, env=env)


def test_the_command_through_a_pipe(run_dir):
    questions = "".join(f"Question {i}?\n" for i in range(6))
    r = _chat(run_dir, f"{QUESTION}\n\n/reset\n/what\n{QUESTION}\n{questions}{'z' * 300}\n"
              "/quit\nnot read\n",
              "--system", "Below is an instruction that describes a task. Write a response "
              "that appropriately completes the request.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{ANSWER}\n{ANSWER}\n")
    assert "records no prompt template; using alpaca" in r.stderr
    assert "[conversation reset]" in r.stderr
    assert "unknown command /what: /reset or /quit" in r.stderr
    assert "oldest turn(s) to fit the model's 256-token context]" in r.stderr
    assert "gristmill chat: the message needs" in r.stderr  # and the chat went on to /quit
    assert "Traceback" not in r.stderr


def test_the_command_s_errors_are_one_line(tmp_path, capsys):
    from gristmill.cli import main

    assert main(["chat", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gristmill chat: ") and err.count("\n") == 1 and "missing" in err


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["template", "finetune", "x"]), inner,
                                       max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_JSON)
def test_any_run_config_gives_a_template_or_one_line(tmp_path, meta):
    (tmp_path / "config.json").write_text(json.dumps(meta))
    try:
        name, recorded = run_template(tmp_path)
    except ChatError as e:
        assert "\n" not in str(e) and "config.json: " in str(e) and "expected one of" in str(e)
    else:
        assert name == "alpaca"


def test_an_unmerged_head_adapter_is_put_back(model, tok, tmp_path):
    import copy

    from gristmill.checkpoint import ADAPTER, CheckpointError, load_model
    from gristmill.lora import LoraConfig, apply_lora, lora_state_dict

    tuned = copy.deepcopy(model)
    apply_lora(tuned, LoraConfig(rank=2, targets=("attn", "head")))
    with torch.no_grad():
        for k, v in lora_state_dict(tuned).items():
            if k.endswith("lora_B"):
                v.normal_()
    base = {k: v for k, v in tuned.state_dict().items() if ".lora_" not in k}
    meta = {"template": "alpaca", "lora": {"rank": 2, "alpha": 16, "targets": ["attn", "head"],
                                           "merged": False}}
    save_checkpoint(tmp_path, 1, model, base, {}, {"step": 1}, meta, tok,
                    {ADAPTER: lora_state_dict(tuned)})
    loaded = load_model(tmp_path).eval()  # what sample, eval, chat and serve load
    assert sum(".lora_A" in k for k in loaded.state_dict()) == 5  # 2 blocks' c_attn, c_proj; head
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], tuned.eval()(x)[0])

    # a malformed lora entry is one line naming config.json
    meta["lora"]["rank"] = "two"
    save_checkpoint(tmp_path / "bad", 1, model, base, {}, {"step": 1}, meta, tok,
                    {ADAPTER: lora_state_dict(tuned)})
    with pytest.raises(CheckpointError, match=r"config\.json: lora: .*rank"):
        load_model(tmp_path / "bad")
