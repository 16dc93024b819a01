"""Templates, tokenization and prompt-first truncation (skebrm.extraction._formatting)."""

from __future__ import annotations

import pytest
from conftest import extraction_make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from skebrm.extraction._formatting import (
    DEFAULT_TEMPLATE,
    check_texts,
    encode_rows,
    resolve_template,
)


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_auto_template_without_chat_template_is_the_default(extraction_tokenizer):
    tpl = resolve_template(extraction_tokenizer, "auto")
    assert (tpl.pre, tpl.mid, tpl.post) == ("", "\n\n", "")
    assert tpl.add_special_tokens
    assert tpl.name == f"format:{DEFAULT_TEMPLATE}"
    assert resolve_template(extraction_tokenizer, None) == tpl


def test_chat_template_pieces_render_like_apply_chat_template(extraction_chat_tokenizer):
    tok = extraction_chat_tokenizer
    tpl = resolve_template(tok, "auto")
    assert not tpl.add_special_tokens
    assert tpl.name.startswith("chat:")
    messages = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    assert tpl.render("Q?", "A.") == tok.apply_chat_template(messages, tokenize=False)


def test_format_string_template(extraction_tokenizer):
    tpl = resolve_template(extraction_tokenizer, "User: {prompt}\nBot: {response}")
    assert tpl.render("hi", "yo") == "User: hi\nBot: yo"


@pytest.mark.parametrize(
    ("template", "error", "match"),
    [
        ("chat", ValueError, "has no chat_template"),
        ("{prompt} only", ValueError, r"must contain '\{prompt\}' and '\{response\}'"),
        ("{prompt}{response}{other}", ValueError, "not a valid format string"),
        (3, TypeError, "template must be"),
    ],
)
def test_bad_templates(extraction_tokenizer, template, error, match):
    with pytest.raises(error, match=match):
        resolve_template(extraction_tokenizer, template)


def test_chat_template_that_rewrites_content_is_refused():
    tok = extraction_make_tokenizer("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(ValueError, match="does not place the prompt and the response verbatim"):
        resolve_template(tok, "auto")


def test_short_rows_are_tokenized_whole(extraction_tokenizer):
    tok = extraction_tokenizer
    tpl = resolve_template(tok)
    enc = encode_rows(tok, ["hello", ""], ["world", "x"], template=tpl, max_length=64)
    assert enc.input_ids[0] == tok("hello\n\nworld")["input_ids"]
    assert enc.input_ids[1] == tok("\n\nx")["input_ids"]
    assert not enc.prompt_cut.any() and not enc.response_cut.any()


def test_long_prompt_is_cut_from_the_left_keeping_the_response(extraction_chat_tokenizer):
    tok = extraction_chat_tokenizer
    tpl = resolve_template(tok)
    prompt = "\n\n".join(f"Human: turn {i} words here\n\nAssistant: reply {i}" for i in range(8))
    response = "the final answer"
    enc = encode_rows(tok, [prompt], [response], template=tpl, max_length=120)
    ids = enc.input_ids[0]
    assert len(ids) <= 120
    assert enc.prompt_cut.tolist() == [True] and enc.response_cut.tolist() == [False]
    text = _decode(tok, ids)
    assert text.endswith(tpl.mid + response + tpl.post)
    kept = text[len(tpl.pre) : -len(tpl.mid + response + tpl.post)]
    assert prompt.endswith(kept)  # only the oldest part went
    assert "reply 7" in kept and "turn 0 " not in kept
    assert kept[:1].strip()  # starts at a word, not mid-word
    # as little as possible was cut: one more word would not fit
    assert len(tok(tpl.render(prompt[-len(kept) - 8 :], response))["input_ids"]) > 120 - 2


def test_response_alone_too_long(extraction_tokenizer):
    tok = extraction_tokenizer
    tpl = resolve_template(tok)
    response = "abcdefghij " * 20
    enc = encode_rows(tok, ["prompt text"], [response], template=tpl, max_length=50)
    ids = enc.input_ids[0]
    assert len(ids) <= 50
    assert enc.prompt_cut.tolist() == [True] and enc.response_cut.tolist() == [True]
    text = _decode(tok, ids)
    assert "prompt" not in text
    assert response.startswith(text.removeprefix("<s>").removesuffix("</s>").lstrip("\n"))
    with pytest.raises(ValueError, match=r"row 0: the response alone is \d+ tokens"):
        encode_rows(tok, ["p"], [response], template=tpl, max_length=50, long_response="error")


def test_max_length_shorter_than_the_template(extraction_chat_tokenizer):
    tok = extraction_chat_tokenizer
    tpl = resolve_template(tok)
    with pytest.raises(ValueError, match="shorter than the template itself"):
        encode_rows(tok, ["p" * 40], ["r" * 40], template=tpl, max_length=5)


def test_bad_texts():
    with pytest.raises(TypeError, match=r"row 1: the response must be a str, got int"):
        check_texts(["a", "b"], ["x", 3])
    with pytest.raises(TypeError, match=r"row 0: the prompt must be a str, got NoneType"):
        check_texts([None], ["x"])
    with pytest.raises(ValueError, match="row 0: the prompt and the response are both empty"):
        check_texts([" "], [""])
    with pytest.raises(ValueError, match="got 2 prompts and 1 responses"):
        check_texts(["a", "b"], ["x"])
    check_texts([""], ["an answer to no prompt"])  # documented: allowed
    check_texts(["a prompt"], [""])  # documented: empty responses are allowed


@settings(max_examples=25, deadline=None)
@given(
    prompt=st.text(alphabet="ab \n", min_size=0, max_size=300),
    response=st.text(alphabet="xy \n", min_size=1, max_size=120),
    max_length=st.integers(min_value=20, max_value=200),
)
def test_truncation_invariants(prompt, response, max_length):
    tok = extraction_make_tokenizer()
    tpl = resolve_template(tok)
    if not prompt.strip() and not response.strip():
        return
    enc = encode_rows(tok, [prompt], [response], template=tpl, max_length=max_length)
    ids = enc.input_ids[0]
    assert len(ids) <= max_length
    full = tok(tpl.render(prompt, response))["input_ids"]
    if len(full) <= max_length:
        assert ids == full and not enc.prompt_cut[0]
    elif not enc.response_cut[0]:
        assert enc.prompt_cut[0]
        text = _decode(tok, ids).removeprefix("<s>").removesuffix("</s>")
        assert text.endswith("\n\n" + response)
        assert prompt.endswith(text[: -len("\n\n" + response)])


# ------------------------------------------------------------- conversations
CONVERSATION = [
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": "A helpful assistant."},
    {"role": "user", "content": "Then boil me an egg."},
]
SYSTEM_CONVERSATION = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
#: a template with a default system turn, as Qwen's and SmolLM2's have
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>\nYou are a bot.</s>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
)


def _chat_ids(tok, messages, response):
    full = [*messages, {"role": "assistant", "content": response}]
    text = tok.apply_chat_template(full, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", ["plain", "default-system"])
@pytest.mark.parametrize("messages", [CONVERSATION, SYSTEM_CONVERSATION], ids=["turns", "system"])
def test_a_conversation_renders_exactly_as_the_chat_template(template, messages):
    from skebrm.extraction._formatting import conversation_prompt

    chat = {"plain": None, "default-system": DEFAULT_SYSTEM_TEMPLATE}[template]
    tok = extraction_make_tokenizer(chat or _CHAT_TEMPLATE)
    tpl = resolve_template(tok)
    prompt = conversation_prompt(tok, tpl, messages)
    enc = encode_rows(tok, [prompt], ["Simmer it."], template=tpl, max_length=512)
    assert enc.input_ids[0] == _chat_ids(tok, messages, "Simmer it.")
    assert tpl.render(prompt, "Simmer it.") == _decode(tok, enc.input_ids[0])


def test_one_user_message_is_its_content_through_the_template(extraction_chat_tokenizer):
    from skebrm.extraction._formatting import conversation_prompt

    tok = extraction_chat_tokenizer
    tpl = resolve_template(tok)
    assert conversation_prompt(tok, tpl, [{"role": "user", "content": "Q?"}]) == "Q?"


def test_a_long_conversation_with_its_own_opening_is_cut_from_the_left():
    from skebrm.extraction._formatting import conversation_prompt

    tok = extraction_make_tokenizer(DEFAULT_SYSTEM_TEMPLATE)
    tpl = resolve_template(tok)
    messages = [{"role": "system", "content": "Be brief."}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} has some words"}
        for i in range(9)
    ]
    prompt = conversation_prompt(tok, tpl, messages)
    enc = encode_rows(tok, [prompt], ["the final answer"], template=tpl, max_length=120)
    text = _decode(tok, enc.input_ids[0])
    assert len(enc.input_ids[0]) <= 120 and enc.prompt_cut[0] and not enc.response_cut[0]
    assert text.endswith("turn 8 has some words</s>\n<|assistant|>\nthe final answer</s>\n")
    assert "Be brief." not in text


def test_a_template_that_rewrites_the_assistant_turn_is_refused():
    from skebrm.extraction._formatting import conversation_prompt

    # numbers the turns of conversations longer than two messages
    chat = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
        "{% if messages|length > 2 %}<{{ loop.index }}>{% endif %}</s>{% endfor %}"
    )
    tok = extraction_make_tokenizer(chat)
    tpl = resolve_template(tok)
    with pytest.raises(ValueError, match="renders this conversation's last assistant turn"):
        conversation_prompt(tok, tpl, CONVERSATION)
    # opens the assistant turn of a two-message conversation differently
    chat = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and messages|length == 2 %}"
        "<|a|>{% else %}<|{{ m['role'] }}|>{% endif %}{{ m['content'] }}</s>{% endfor %}"
    )
    tok = extraction_make_tokenizer(chat)
    tpl = resolve_template(tok)
    with pytest.raises(ValueError, match="without the text that opens the assistant turn"):
        conversation_prompt(tok, tpl, CONVERSATION)


def test_conversation_prompt_needs_a_chat_template(extraction_tokenizer):
    from skebrm.extraction._formatting import conversation_prompt

    tpl = resolve_template(extraction_tokenizer)
    with pytest.raises(ValueError, match="needs a chat template"):
        conversation_prompt(extraction_tokenizer, tpl, CONVERSATION)


_CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
