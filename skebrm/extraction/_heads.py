"""Finding the final scoring layer of a reward model, and the adapter hook.

A reward model computes ``r = W·e + b`` with a final ``nn.Linear`` of one output. Across
families that layer is called ``score`` (decoder ``*ForSequenceClassification``),
``classifier`` (BERT, DeBERTa), ``out_proj`` (RoBERTa, behind a dense layer), ``v_head`` or
``summary`` (value heads), ... The generic rule looks for the ``nn.Linear`` modules with
``out_features == 1`` and keeps the one outside the backbone (``model.base_model``); when
that is ambiguous it prefers the known names above. :class:`HeadAdapter` covers the rest.

Pooling follows the head's input: a 2-D input ``(batch, hidden)`` means the model pooled
itself (CLS pooler, ``ContextPooler``, ...) and ``e`` is that input; a 3-D input
``(batch, seq, hidden)`` means the head runs on every position and the model picks one
(decoder reward models: the rightmost token that is not ``config.pad_token_id``, or the
last token when there is no pad id), and ``e`` is the input at that position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["KNOWN_HEAD_NAMES", "HeadAdapter", "find_scoring_head", "pooled_index"]

KNOWN_HEAD_NAMES = (
    "score",
    "classifier",
    "out_proj",
    "v_head",
    "summary",
    "value_head",
    "reward_head",
    "head",
)
_POOLINGS = ("auto", "last_token", "model")


@dataclass(frozen=True)
class HeadAdapter:
    """Tell :class:`EmbeddingExtractor` where the scoring layer is and how rows are pooled.

    Parameters
    ----------
    layer : str or callable
        Dotted name of the final ``nn.Linear`` (``"v_head.summary"``) or a function
        ``model -> nn.Linear``.
    pooling : {"auto", "last_token", "model"}, default="auto"
        ``"model"``: the layer receives one vector per row (the model pools itself).
        ``"last_token"``: the layer runs on every position and the row's reward is its
        output at the last non-pad token. ``"auto"`` decides from the layer input's shape.

    Examples
    --------
    A value head on a causal LM (as in TRL), whose ``forward`` returns per-token values:

    >>> from skebrm.extraction import HeadAdapter
    >>> adapter = HeadAdapter("v_head.summary", pooling="last_token")
    """

    layer: str | Callable[[nn.Module], nn.Linear]
    pooling: str = "auto"

    def __post_init__(self):
        if self.pooling not in _POOLINGS:
            raise ValueError(
                f"HeadAdapter: pooling must be one of {_POOLINGS}, got {self.pooling!r}."
            )
        if not (isinstance(self.layer, str) or callable(self.layer)):
            raise TypeError(
                "HeadAdapter: layer must be a dotted module name or a callable "
                f"model -> nn.Linear, got {type(self.layer).__name__}."
            )

    def find(self, model: nn.Module) -> tuple[str, nn.Linear]:
        if isinstance(self.layer, str):
            try:
                layer = model.get_submodule(self.layer)
            except AttributeError as exc:
                raise ValueError(
                    f"HeadAdapter: {type(model).__name__} has no submodule {self.layer!r}."
                ) from exc
            name = self.layer
        else:
            layer = self.layer(model)
            name = next((n for n, m in model.named_modules() if m is layer), "<adapter>")
        _check_linear(layer, name, model)
        return name, layer


def _check_linear(layer, name: str, model: nn.Module) -> None:
    if not isinstance(layer, nn.Linear):
        raise TypeError(
            f"EmbeddingExtractor: the scoring layer {name!r} of {type(model).__name__} must "
            f"be an nn.Linear, got {type(layer).__name__}."
        )
    if layer.out_features != 1:
        raise ValueError(
            f"EmbeddingExtractor: the scoring layer {name!r} of {type(model).__name__} has "
            f"{layer.out_features} outputs; a reward model has exactly one label "
            "(num_labels=1)."
        )


def find_scoring_head(model: nn.Module, head=None) -> tuple[str, nn.Linear, str]:
    """Locate the final scoring ``nn.Linear``.

    Parameters
    ----------
    model : nn.Module
        The reward model.
    head : None, str, callable or HeadAdapter
        ``None``: the generic rule (module docstring), which also requires
        ``config.num_labels == 1`` when the model has a config. A str or callable is
        wrapped in ``HeadAdapter(head)``; the adapter's layer must have one output.

    Returns
    -------
    name : str
        Dotted module name of the layer.
    layer : nn.Linear
        The layer itself, with one output.
    pooling : {"auto", "last_token", "model"}
        How the layer's input is pooled (see :class:`HeadAdapter`).
    """
    if head is not None:
        adapter = head if isinstance(head, HeadAdapter) else HeadAdapter(head)
        name, layer = adapter.find(model)
        return name, layer, adapter.pooling
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", 1) if config is not None else 1
    if num_labels != 1:
        raise ValueError(
            f"EmbeddingExtractor: {type(model).__name__} has num_labels={num_labels}; a "
            "reward model has exactly one label. Load it with num_labels=1 or pass a "
            "one-output head through head=HeadAdapter(...)."
        )

    candidates = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 1
    ]
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        inside = {id(m) for m in base.modules()}
        outside = [(n, m) for n, m in candidates if id(m) not in inside]
    else:
        outside = candidates
    for pool in (outside, candidates):
        if len(pool) == 1:
            return pool[0][0], pool[0][1], "auto"
        known = [(n, m) for n, m in pool if n.rsplit(".", 1)[-1] in KNOWN_HEAD_NAMES]
        if len(known) == 1:
            return known[0][0], known[0][1], "auto"
    multi = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in KNOWN_HEAD_NAMES
    ]
    found = [n for n, _ in candidates] or multi
    raise ValueError(
        f"EmbeddingExtractor: cannot find the scoring layer of {type(model).__name__}: "
        "expected one nn.Linear with out_features=1 (usually named one of "
        f"{list(KNOWN_HEAD_NAMES)}), found {found or 'none'}. Pass "
        "head=HeadAdapter('dotted.name', pooling=...) to name it."
    )


def pooled_index(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id
) -> torch.Tensor:
    """Position each row is pooled at, as decoder ``*ForSequenceClassification`` does.

    With a pad id: the rightmost token that is not the pad id (works for left and right
    padding). Without one: the last attended token, which is the model's own "last token"
    on the unpadded row.
    """
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    if pad_token_id is None:
        mask = attention_mask.to(torch.long)
    else:
        mask = (input_ids != pad_token_id).to(torch.long)
    return (positions * mask).argmax(-1)
