"""Data of the best-of-n over-optimisation study: policy samples, gold rewards, proxy features.

:class:`BestOfNData` holds, for training prompts (``k`` samples each) and evaluation
prompts (``N`` samples each), the proxy RM's features of every sample (a frozen
backbone's embedding) and the gold RM's reward of every sample. Two sources build it:

* :func:`policy_best_of_n_data` — the real testbed: prompts from permissively licensed
  sets (:func:`select_prompts`), samples from a policy through the resumable sample cache
  (:mod:`skebrm.sampling`), gold rewards from a fine-tuned reward model and features
  from the proxy backbone, both through the embedding cache;
* :func:`skebrm.experiments.synthetic.make_synthetic_best_of_n` — numbers drawn in
  place of generations, for tests and CI.

Both are called with a :class:`BestOfNContext` (the built sampler, model loaders,
cache folder, seed), so the configs (``conf/bon_data/``) only hold plain settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BestOfNContext",
    "BestOfNData",
    "embed_rows",
    "folder_weights_fingerprint",
    "policy_best_of_n_data",
    "policy_samples",
    "sample_cache_folder",
    "select_prompts",
]


@dataclass
class BestOfNContext:
    """What a data source needs at run time, built from the composed config.

    Attributes
    ----------
    sampler : PolicySampler or None
    load_gold, load_proxy : callable returning (model, tokenizer), or None
    gold, proxy : dict
        ``name``, ``max_length``, ``batch_size`` (and the config that identifies the model).
    cache_dir : str or None
    seed : int
    device : str
    verbose : bool
    """

    sampler: object = None
    load_gold: Callable | None = None
    load_proxy: Callable | None = None
    gold: dict = field(default_factory=dict)
    proxy: dict = field(default_factory=dict)
    cache_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    verbose: bool = False


@dataclass
class BestOfNData:
    """Proxy features and gold rewards of the policy samples.

    Attributes
    ----------
    train_features : ndarray of shape (n_train_prompts, k, d)
    train_gold : ndarray of shape (n_train_prompts, k)
    eval_features : ndarray of shape (n_eval_prompts, N, d)
    eval_gold : ndarray of shape (n_eval_prompts, N)
    eval_n_tokens : ndarray of shape (n_eval_prompts, N) or None
        Tokens of each evaluation sample (policy samples only).
    eval_finished : bool ndarray of shape (n_eval_prompts, N) or None
        Whether each evaluation sample ended before the token budget (policy samples only).
    info : dict
        Provenance (prompt counts, token statistics, cache folders).
    """

    train_features: np.ndarray
    train_gold: np.ndarray
    eval_features: np.ndarray
    eval_gold: np.ndarray
    info: dict = field(default_factory=dict)
    eval_n_tokens: np.ndarray | None = None
    eval_finished: np.ndarray | None = None

    def __post_init__(self):
        for part in ("train", "eval"):
            f, g = getattr(self, f"{part}_features"), getattr(self, f"{part}_gold")
            if f.ndim != 3 or g.shape != f.shape[:2]:
                raise ValueError(
                    f"BestOfNData: {part}_features must have shape (n_prompts, n_samples, d) "
                    f"and {part}_gold (n_prompts, n_samples); got {f.shape} and {g.shape}."
                )
        if self.train_features.shape[2] != self.eval_features.shape[2]:
            raise ValueError(
                "BestOfNData: train and eval features must have the same dimension, got "
                f"{self.train_features.shape[2]} and {self.eval_features.shape[2]}."
            )
        for name in ("eval_n_tokens", "eval_finished"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != self.eval_gold.shape:
                raise ValueError(
                    f"BestOfNData: {name} must have the shape of eval_gold "
                    f"{self.eval_gold.shape}, got {np.shape(value)}."
                )


def select_prompts(
    files: Sequence[str | os.PathLike],
    *,
    n_train: int,
    n_eval: int,
    max_prompt_chars: int = 800,
    random_state: int = 0,
) -> tuple[list[str], list[str]]:
    """Disjoint training and evaluation prompts, drawn evenly from each file.

    Each file contributes its distinct prompts of at most ``max_prompt_chars``
    characters, in a random order (``random_state``): the first
    ``n_eval / len(files)`` go to evaluation, the next ``n_train / len(files)`` to
    training (the remainders of the division go to the first files).

    Returns
    -------
    train, eval : list of str
    """
    from skebrm.experiments.data import load_pairs_coercing_texts

    files = list(files)
    if not files:
        raise ValueError("select_prompts: files is empty; pass at least one pair file.")
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"select_prompts: {name} must be a positive int, got {value!r}.")
    rng = np.random.default_rng(random_state)
    train, evaluation = [], []
    for f_i, path in enumerate(files):
        seen: dict[str, None] = {}
        for p in load_pairs_coercing_texts(path):
            if len(p["prompt"]) <= max_prompt_chars and p["prompt"].strip():
                seen.setdefault(p["prompt"], None)
        prompts = list(seen)
        k_eval = n_eval // len(files) + (f_i < n_eval % len(files))
        k_train = n_train // len(files) + (f_i < n_train % len(files))
        if k_eval + k_train > len(prompts):
            raise ValueError(
                f"select_prompts: {str(path)!r} has {len(prompts)} prompts of at most "
                f"{max_prompt_chars} characters, fewer than the {k_eval + k_train} asked; "
                "raise max_prompt_chars or ask for fewer prompts."
            )
        order = rng.permutation(len(prompts))
        evaluation += [prompts[i] for i in order[:k_eval]]
        train += [prompts[i] for i in order[k_eval : k_eval + k_train]]
    return train, evaluation


def folder_weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """SHA-256 over the weight files of a saved model folder (None if it holds none)."""
    from skebrm._io import sha256_file

    files = sorted(
        p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")
    )
    if not files:
        return None
    return _digest(*[(p.name, sha256_file(p)) for p in files])


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def sample_cache_folder(cache_dir, sampler_identity: dict, prompts, n_samples: int, seed: int):
    """``<cache_dir>/samples/<backend>-<key>``: one folder per sampler, prompts, n and seed."""
    from skebrm.sampling import prompts_fingerprint

    key = _digest(sampler_identity, prompts_fingerprint(prompts), n_samples, seed)
    return Path(cache_dir) / "samples" / f"{sampler_identity['backend']}-{key[:24]}"


def embed_rows(
    rows: Sequence[tuple[str, str]],
    load_model: Callable[[], tuple],
    *,
    identity: dict,
    cache_dir: str | os.PathLike | None,
    max_length: int,
    batch_size: int,
    device: str = "cpu",
    verbose: bool = False,
):
    """Embeddings and rewards of (prompt, response) rows, through the embedding cache.

    The folder ``<cache_dir>/<name>-<key>`` is named by the rows, ``identity`` (the
    model's config), the package version and the extraction code, like
    :func:`skebrm.experiments.data.embed_pairs`; the cache checks the model's weights and
    the texts against its own key when it is filled.

    Returns
    -------
    embeddings : ndarray of shape (n_rows, d), rewards : ndarray of shape (n_rows,)
    """
    from skebrm import __version__
    from skebrm.experiments.data import _extraction_source_sha, extract_cached

    rows = [(str(p), str(r)) for p, r in rows]
    folder = None
    if cache_dir is not None:
        key = _digest(rows, identity, int(max_length), __version__, _extraction_source_sha())
        folder = Path(cache_dir) / f"{identity.get('name', 'model')}-{key[:24]}"
    res = extract_cached(
        rows,
        load_model,
        folder,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
    )
    return np.array(res.embeddings, dtype=np.float32), np.array(res.rewards, dtype=np.float64)


def _samples(context: BestOfNContext, prompts, n_samples, shard_size):
    from skebrm.sampling import load_samples, sample_to_cache

    sampler = context.sampler
    if context.cache_dir is None:
        completions = sampler.sample(prompts, n_samples, seed=context.seed)
        texts = np.array([[c.text for c in row] for row in completions], dtype=object)
        n_tok = np.array([[c.n_tokens for c in row] for row in completions])
        finished = np.array([[c.finish_reason == "stop" for c in row] for row in completions])
        return texts, n_tok, finished, None
    folder = sample_cache_folder(
        context.cache_dir, sampler.identity(), prompts, n_samples, context.seed
    )
    sample_to_cache(
        sampler,
        prompts,
        folder,
        n_samples=n_samples,
        seed=context.seed,
        shard_size=shard_size,
        verbose=context.verbose,
    )
    s = load_samples(folder)
    return s.texts, s.n_tokens, np.asarray(s.finish_reason == "stop"), str(folder)


def policy_samples(
    context: BestOfNContext,
    *,
    prompt_files: Sequence[str],
    n_train_prompts: int = 250,
    n_eval_prompts: int = 100,
    n_train_samples: int = 8,
    n_eval_samples: int = 32,
    max_prompt_chars: int = 800,
    shard_size: int = 4,
) -> dict[str, tuple]:
    """Sample (or read from the cache) the training and evaluation prompts' completions.

    The first step of :func:`policy_best_of_n_data`, also run alone by
    ``scripts/sample_policy.py`` to fill the cache in the background.

    Returns
    -------
    dict
        ``"train"`` and ``"eval"``: ``(prompts, texts, n_tokens, finished, folder)``, where
        ``texts``, ``n_tokens`` and ``finished`` (the sample ended before the token budget)
        have shape ``(n_prompts, n_samples)``.
    """
    if context.sampler is None:
        raise ValueError("policy_samples: the context has no sampler.")
    train_prompts, eval_prompts = select_prompts(
        prompt_files,
        n_train=n_train_prompts,
        n_eval=n_eval_prompts,
        max_prompt_chars=max_prompt_chars,
        random_state=context.seed,
    )
    out = {}
    for part, prompts, n in (
        ("eval", eval_prompts, n_eval_samples),
        ("train", train_prompts, n_train_samples),
    ):
        out[part] = (prompts, *_samples(context, prompts, n, shard_size))
    return out


def policy_best_of_n_data(
    context: BestOfNContext,
    *,
    prompt_files: Sequence[str],
    n_train_prompts: int = 250,
    n_eval_prompts: int = 100,
    n_train_samples: int = 8,
    n_eval_samples: int = 32,
    max_prompt_chars: int = 800,
    shard_size: int = 4,
) -> BestOfNData:
    """The real testbed: sample, score with the gold RM, embed with the proxy backbone.

    Parameters
    ----------
    context : BestOfNContext
        Needs ``sampler``, ``load_gold`` and ``load_proxy``.
    prompt_files : sequence of str
        Pair files whose prompts are used (see :func:`select_prompts`).
    n_train_prompts, n_eval_prompts : int
    n_train_samples, n_eval_samples : int
        ``k`` samples per training prompt (pairs are drawn among them), ``N`` per
        evaluation prompt (best-of-n for every ``n ≤ N``).
    max_prompt_chars : int, default=800
    shard_size : int, default=4
        Prompts per shard of the sample cache.

    Returns
    -------
    BestOfNData
    """
    for name in ("sampler", "load_gold", "load_proxy"):
        if getattr(context, name) is None:
            raise ValueError(f"policy_best_of_n_data: the context has no {name}.")
    sampled = policy_samples(
        context,
        prompt_files=prompt_files,
        n_train_prompts=n_train_prompts,
        n_eval_prompts=n_eval_prompts,
        n_train_samples=n_train_samples,
        n_eval_samples=n_eval_samples,
        max_prompt_chars=max_prompt_chars,
        shard_size=shard_size,
    )
    parts, info = {}, {"sample_caches": {}}
    for part in ("train", "eval"):
        prompts, texts, n_tok, finished, folder = sampled[part]
        n = texts.shape[1]
        rows = [(p, str(t)) for p, row in zip(prompts, texts) for t in row]
        common = {"cache_dir": context.cache_dir, "device": context.device}
        _, gold = embed_rows(
            rows,
            context.load_gold,
            identity=context.gold,
            max_length=int(context.gold["max_length"]),
            batch_size=int(context.gold["batch_size"]),
            verbose=context.verbose,
            **common,
        )
        features, _ = embed_rows(
            rows,
            context.load_proxy,
            identity=context.proxy,
            max_length=int(context.proxy["max_length"]),
            batch_size=int(context.proxy["batch_size"]),
            verbose=context.verbose,
            **common,
        )
        parts[part] = (features.reshape(len(prompts), n, -1), gold.reshape(len(prompts), n))
        info["sample_caches"][part] = folder
        info[f"{part}_prompts"] = len(prompts)
        info[f"{part}_samples_per_prompt"] = n
        info[f"{part}_mean_tokens"] = float(np.mean(n_tok))
        info[f"{part}_stopped"] = float(np.mean(finished))
    info["sampler"] = context.sampler.identity()
    _, _, eval_n_tokens, eval_finished, _ = sampled["eval"]
    return BestOfNData(
        *parts["train"],
        *parts["eval"],
        info=info,
        eval_n_tokens=np.asarray(eval_n_tokens),
        eval_finished=np.asarray(eval_finished, dtype=bool),
    )
