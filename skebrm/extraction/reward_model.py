"""Real reward models built offline: a backbone plus a linear Bradley–Terry head.

:func:`build_reward_model` extracts the backbone's embeddings of preference pairs (the
input of its ``*ForSequenceClassification`` scoring layer, optionally through the
resumable cache), fits ``w`` by logistic regression on chosen − rejected differences
(:func:`skebrm.bradley_terry.fit_bradley_terry`), writes ``w`` into the scoring layer
(bias 0) and saves the model with ``save_pretrained``. The result is an ordinary Hugging
Face reward model: ``EmbeddingExtractor(path)`` loads it and returns the same ``e`` as
the backbone and ``r = w·e``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from skebrm._io import (
    install_files,
    remove_stale,
    sha256_file,
    staged_files,
    staging_folder,
    write_json_atomic,
)
from skebrm._pairs import check_pairs
from skebrm.bradley_terry import fit_bradley_terry
from skebrm.extraction._heads import find_scoring_head
from skebrm.extraction.backbones import load_minilm, load_smollm2
from skebrm.extraction.cache import extract_to_cache, load_cache
from skebrm.extraction.extractor import EmbeddingExtractor

__all__ = ["build_reward_model"]

_BACKBONES = {"minilm": load_minilm, "smollm2": load_smollm2}
_INFO = "skebrm_reward_model.json"


def _check_output_dir(output_dir: Path, overwrite: bool) -> set[str]:
    """Refuse a non-empty ``output_dir`` unless ``overwrite``; the files of a reward model
    saved there before (to replace), as its record lists them."""
    if not output_dir.exists():
        return set()
    if not output_dir.is_dir():
        raise NotADirectoryError(
            f"build_reward_model: output_dir={str(output_dir)!r} exists and is not a folder."
        )
    if not overwrite and any(output_dir.iterdir()):
        raise FileExistsError(
            f"build_reward_model: output_dir={str(output_dir)!r} exists; pass overwrite=True "
            "to write the reward model into it (a reward model saved there before is "
            "replaced; other files are kept)."
        )
    try:
        files = json.loads((output_dir / _INFO).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and "/" not in f and not f.startswith(".")}


def build_reward_model(
    backbone,
    pairs,
    output_dir: str | os.PathLike,
    *,
    C: float = 1.0,
    max_length: int = 256,
    batch_size: int = 16,
    template: str | None = "auto",
    embedding_cache: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Fit a Bradley–Terry head on a backbone and save the reward model.

    Parameters
    ----------
    backbone : {"minilm", "smollm2"} or (model, tokenizer)
        A named offline backbone, or any one-label ``*ForSequenceClassification`` model
        with its tokenizer (its scoring layer is overwritten).
    pairs : list of dict
        Preference pairs (``prompt``, ``chosen``, ``rejected``).
    output_dir : path-like
        Where the model is saved, as ``save_pretrained`` does: each file is written under
        a temporary name, then renamed into place. The folder's other files are kept.
    C : float, default=1.0
        Inverse L2 strength of the logistic regression.
    max_length : int, default=256
        Token budget of a formatted row, passed to :class:`EmbeddingExtractor`.
    batch_size : int, default=16
        Rows per forward pass, passed to :class:`EmbeddingExtractor`.
    template : {"auto", "chat"}, str or None, default="auto"
        The row template, passed to :class:`EmbeddingExtractor`; use the same
        ``max_length`` and ``template`` when extracting from the saved model.
    embedding_cache : path-like, optional
        Cache the backbone's embeddings there (resumable, see :func:`extract_to_cache`).
    overwrite : bool, default=False
        Write into a non-empty ``output_dir``: the files of a reward model saved there
        before that this one does not write are deleted; other files are never deleted.
    verbose : bool, default=False
        Progress bar while the embeddings are extracted.

    Returns
    -------
    Path
        ``output_dir``, holding the model, its tokenizer and ``skebrm_reward_model.json``.
    """
    output_dir = Path(output_dir)
    previous = _check_output_dir(output_dir, overwrite)
    if isinstance(backbone, str):
        if backbone not in _BACKBONES:
            raise ValueError(
                f"build_reward_model: backbone must be one of {sorted(_BACKBONES)} or a "
                f"(model, tokenizer) tuple, got {backbone!r}."
            )
        model, tokenizer = _BACKBONES[backbone]()
        name = backbone
    elif isinstance(backbone, tuple) and len(backbone) == 2:
        model, tokenizer = backbone
        name = type(model).__name__
    else:
        raise TypeError(
            "build_reward_model: backbone must be 'minilm', 'smollm2' or a (model, tokenizer) "
            f"tuple, got {type(backbone).__name__}."
        )
    if not isinstance(pairs, (list, tuple)) or not pairs or not isinstance(pairs[0], dict):
        raise ValueError(
            "build_reward_model: pairs must be a non-empty list of dicts with 'prompt', "
            "'chosen', 'rejected'."
        )
    extractor = EmbeddingExtractor(
        model,
        tokenizer,
        max_length=max_length,
        batch_size=batch_size,
        template=template,
        verbose=verbose,
    ).fit()
    if embedding_cache is not None:
        extract_to_cache(extractor, pairs, embedding_cache)
        res = load_cache(embedding_cache)
    else:
        res = extractor.extract(pairs)
    X = np.asarray(res.embeddings, dtype=np.float64)
    idx_c, idx_r = check_pairs(res.pair_id, res.chosen, len(X), caller="build_reward_model")
    coef = fit_bradley_terry(X[idx_c], X[idx_r], C=C)
    train_accuracy = float(np.mean(X[idx_c] @ coef > X[idx_r] @ coef))

    _, layer, _ = find_scoring_head(extractor.model_)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(coef, dtype=layer.weight.dtype).reshape(1, -1))
        if layer.bias is not None:
            layer.bias.zero_()
    model = extractor.model_
    model.config.num_labels = 1

    from skebrm import __version__
    from skebrm.datasets import dataset_fingerprint

    info = {
        "backbone": name,
        "head": extractor.head_name_,
        "C": C,
        "n_pairs": len(idx_c),
        "train_accuracy": train_accuracy,
        "max_length": max_length,
        "template": extractor.template_.name,
        "dataset_sha256": dataset_fingerprint(pairs),
        "n_truncated": res.n_truncated,
        "skebrm_version": __version__,
    }
    with staging_folder(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = staged_files(tmp)
        info["files"] = {name: sha256_file(tmp / name) for name in files}
        install_files(tmp, output_dir, files)
        write_json_atomic(output_dir / _INFO, info)
    remove_stale(output_dir, previous - set(files) - {_INFO})
    return output_dir
