"""TRL's reward-function arguments: conversations to rows, None for nothing to score, logging."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from skebrm import RefinedRewardModel, RewardScores
from skebrm.integrations.trl import completion_text, prompt_text, to_rows, trl_reward


def test_plain_strings_pass_through():
    assert to_rows(["p1", "p2"], ["c1", "c2"]) == (["p1", "p2"], ["c1", "c2"])


def test_one_user_message_is_its_content():
    assert prompt_text([{"role": "user", "content": "What is 2+2?"}]) == "What is 2+2?"
    assert completion_text([{"role": "assistant", "content": "4"}]) == "4"


def test_several_turns_become_a_transcript():
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert (
        prompt_text(prompt) == "System: Be brief.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye"
    )
    two = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert completion_text(two) == "a\n\nb"


def test_text_parts_are_joined_and_other_parts_refused():
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert prompt_text([{"role": "user", "content": parts}]) == "Hello"
    image = [{"type": "image"}, {"type": "text", "text": "x"}]
    with pytest.raises(ValueError, match="content part of type 'image'"):
        prompt_text([{"role": "user", "content": image}])


@pytest.mark.parametrize(
    ("prompts", "completions", "error", "match"),
    [
        (None, ["c"], TypeError, "prompts is required"),
        ("p", ["c"], TypeError, "prompts must be a list"),
        (["p", "q"], ["c"], ValueError, "same length, got 2 and 1"),
        ([3], ["c"], ValueError, r"prompts\[0\] must be a str or a list of messages, got int"),
        ([[{"content": "x"}]], ["c"], ValueError, "message dict with 'role' and 'content'"),
    ],
)
def test_bad_arguments(prompts, completions, error, match):
    with pytest.raises(error, match=match):
        to_rows(prompts, completions)


class _FakeBundle:
    """score() returns known numbers, so the arithmetic is checked exactly."""

    __name__ = "ebrm"
    penalty = 2.0

    def __init__(self):
        self.seen = None

    def score(self, prompts, completions):
        self.seen = (prompts, completions)
        n = len(prompts)
        return RewardScores(np.arange(n, dtype=float), 10.0 + np.arange(n), np.full(n, 0.25))


def test_reward_is_refined_minus_penalty_std_and_none_for_empty_rows():
    fake = _FakeBundle()
    logged = {}
    out = trl_reward(
        fake,
        ["a", "", "b"],
        ["x", "  ", "y"],
        log_metric=lambda name, value: logged.setdefault(name, value),
        trainer_state=SimpleNamespace(global_step=3),
        topic=["t1", "t2", "t3"],
    )
    assert fake.seen == (["a", "b"], ["x", "y"])
    assert out == [10.0 - 0.5, None, 11.0 - 0.5]
    assert logged == {"ebrm/reward_std": 0.25, "ebrm/base_reward": 0.5}


def test_all_empty_rows_skip_scoring():
    fake = _FakeBundle()
    assert trl_reward(fake, [""], [""]) == [None]
    assert fake.seen is None


def test_bundle_call_on_conversations_equals_score_on_their_text(tiny_bundle_parts):
    parts = tiny_bundle_parts
    bundle = RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length, penalty=1.0
    )
    prompts = [[{"role": "user", "content": "Is the sky blue?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "Yes, on a clear day."}],
        [{"role": "assistant", "content": "No."}],
    ]
    got = bundle(prompts=prompts, completions=completions, completion_ids=[[1], [2]])
    s = bundle.score(["Is the sky blue?"] * 2, ["Yes, on a clear day.", "No."])
    np.testing.assert_allclose(got, s.refined_reward - s.std, atol=1e-12)


class _ChatBundle(_FakeBundle):
    """A fake bundle with a real tokenizer and row template, as RefinedRewardModel has."""

    def __init__(self, tokenizer):
        from skebrm.extraction._formatting import resolve_template

        super().__init__()
        self.tokenizer = tokenizer
        self.extractor = SimpleNamespace(
            template_=resolve_template(tokenizer), tokenizer_=tokenizer
        )


def test_conversations_go_through_the_rms_chat_template(extraction_chat_tokenizer):
    from skebrm.extraction._formatting import encode_rows

    tok = extraction_chat_tokenizer
    bundle = _ChatBundle(tok)
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    completion = [{"role": "assistant", "content": "Goodbye."}]
    trl_reward(bundle, [prompt, "plain text"], [completion, "ok"])
    prompts, completions = bundle.seen
    assert completions == ["Goodbye.", "ok"]
    assert prompts[1] == "plain text"  # a string prompt is used as it is
    enc = encode_rows(
        tok, prompts, completions, template=bundle.extractor.template_, max_length=512
    )
    expected = tok.apply_chat_template([*prompt, *completion], tokenize=False)
    assert tok.decode(enc.input_ids[0], skip_special_tokens=False) == expected
    assert enc.input_ids[0] == tok(expected, add_special_tokens=False)["input_ids"]


def test_without_a_chat_template_conversations_are_flattened(extraction_tokenizer):
    bundle = _ChatBundle(extraction_tokenizer)
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    trl_reward(bundle, [prompt], ["x"])
    assert bundle.seen == (["Human: Hi\n\nAssistant: Hello!"], ["x"])
