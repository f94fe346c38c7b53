"""The prompt formats shared by fine-tuning, chat and the server (gristmill.prompts)."""

import pytest
from gristmill.prompts import (
    PREAMBLE,
    PromptFormatError,
    alpaca_prompt,
    alpaca_segments,
    chat_prompt_ids,
    chat_segments,
    check_messages,
    encode_segments,
)
from gristmill.tokenizer import Tokenizer
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.resolve("gpt2")


def book_format_input(entry):
    # The book's ch. 7 format_input, written out as the reference.
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


@pytest.mark.parametrize("entry", [
    {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "It sat."},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
])
def test_alpaca_matches_the_book(entry, tok):
    segs = alpaca_segments(entry)
    assert segs[0].text == book_format_input(entry) + "\n\n### Response:\n"
    ids, targets = encode_segments(tok, segs)
    whole = book_format_input(entry) + f"\n\n### Response:\n{entry['output']}"
    assert ids == tok.encode(whole) + [tok.eot_token]
    n_target = len(tok.encode(entry["output"])) + 1
    assert targets == [False] * (len(ids) - n_target) + [True] * n_target


def test_single_user_turn_is_an_alpaca_prompt(tok):
    text = "".join(s.text for s in chat_segments([{"role": "user", "content": "Hi"}], True))
    assert text == alpaca_prompt("Hi")
    assert chat_prompt_ids(tok, [{"role": "user", "content": "Hi"}]) == tok.encode(text)


def test_conversation_targets_and_system(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    segs = chat_segments(msgs, add_generation_prompt=True)
    assert segs[0].text.startswith("Be brief.") and PREAMBLE not in segs[0].text
    assert [s.target for s in segs] == [False, True, False]
    assert segs[1].end and segs[-1].text.endswith("### Response:\n")


def test_special_token_text_stays_text(tok):
    ids = chat_prompt_ids(tok, [{"role": "user", "content": "<|endoftext|>"}])
    assert tok.eot_token not in ids


@pytest.mark.parametrize("bad,where", [
    ([], "non-empty"),
    ([{"role": "bot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "messages[1]"),
    (["hi"], "messages[0]"),
])
def test_bad_conversations_are_named(bad, where):
    with pytest.raises(PromptFormatError, match=__import__("re").escape(where)):
        check_messages(bad)


def test_bad_record_fields():
    with pytest.raises(PromptFormatError, match="'instruction'"):
        alpaca_segments({"output": "x"})
    with pytest.raises(PromptFormatError, match="'output'"):
        alpaca_segments({"instruction": "x", "output": None})


message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                 "content": st.text(max_size=20)})


@given(st.lists(message, min_size=1, max_size=6), st.booleans())
def test_segments_cover_every_turn(msgs, gen):
    segs = chat_segments(msgs, add_generation_prompt=gen)
    text = "".join(s.text for s in segs)
    for m in msgs:
        assert m["content"] in text
    assert sum(s.end for s in segs) == sum(m["role"] == "assistant" for m in msgs)
    assert all(s.end == s.target for s in segs)


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers(), max_size=3),
                 st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                          max_size=3)))
def test_any_shape_is_checked_or_refused(value):
    try:
        check_messages(value)
    except PromptFormatError:
        pass
