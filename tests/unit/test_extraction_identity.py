"""The extractor's record of what determines an embedding does not drift with use."""

from __future__ import annotations

from conftest import extraction_make_tokenizer

from skebrm.extraction.extractor import _tokenizer_fingerprint


def test_the_tokenizer_fingerprint_ignores_truncation_and_padding_state():
    tok = extraction_make_tokenizer()
    before = _tokenizer_fingerprint(tok)
    tok(["a long text " * 50, "b"], truncation=True, max_length=8, padding=True)
    assert tok.backend_tokenizer.truncation is not None  # the call left its state behind
    assert _tokenizer_fingerprint(tok) == before
    tok(["x"], padding="max_length", max_length=16)
    assert _tokenizer_fingerprint(tok) == before
    # the fingerprint reads the tokenizer without resetting what the caller set
    assert tok.backend_tokenizer.padding is not None


def test_the_tokenizer_fingerprint_still_sees_the_definition():
    tok = extraction_make_tokenizer()
    other = extraction_make_tokenizer()
    assert _tokenizer_fingerprint(other) == _tokenizer_fingerprint(tok)
    other.add_tokens(["<extra>"])
    assert _tokenizer_fingerprint(other) != _tokenizer_fingerprint(tok)
    no_pad = extraction_make_tokenizer(pad=False)
    assert _tokenizer_fingerprint(no_pad) != _tokenizer_fingerprint(tok)


def test_identity_is_the_same_before_and_after_an_extraction():
    from skebrm.datasets import load_hh_rlhf_harmless
    from skebrm.experiments.backbones import build_tiny_reward_model
    from skebrm.extraction import EmbeddingExtractor

    model, tokenizer = build_tiny_reward_model("bert")
    extractor = EmbeddingExtractor(model, tokenizer, max_length=16).fit()
    before = extractor.identity()
    extractor.extract(load_hh_rlhf_harmless(n=4))
    assert extractor.identity() == before
    # a second extractor on the same tokenizer, used in between as a notebook would,
    # records the same thing
    tokenizer(["some text " * 20], truncation=True, max_length=8, padding="max_length")
    assert EmbeddingExtractor(model, tokenizer, max_length=16).fit().identity() == before
