"""Finding the scoring layer, the adapter hook and last-token pooling (skebrm.extraction._heads)."""

from __future__ import annotations

import pytest
import torch
from conftest import extraction_make_model
from torch import nn

from skebrm.extraction import HeadAdapter, find_scoring_head
from skebrm.extraction._heads import pooled_index


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gate = nn.Linear(4, 1)  # a one-output layer inside the backbone


class _RM(nn.Module):
    def __init__(self, head_name="score", extra=False):
        super().__init__()
        self.backbone = _Backbone()
        setattr(self, head_name, nn.Linear(4, 1))
        if extra:
            self.other = nn.Linear(4, 1)

    @property
    def base_model(self):
        return self.backbone


@pytest.mark.parametrize("name", ["score", "classifier", "v_head", "anything_else"])
def test_generic_rule_finds_the_one_layer_outside_the_backbone(name):
    found, layer, pooling = find_scoring_head(_RM(name))
    assert found == name and layer.out_features == 1 and pooling == "auto"


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("llama", "score"),
        ("gpt2", "score"),
        ("bert", "classifier"),
        ("deberta-v2", "classifier"),
        ("roberta", "classifier.out_proj"),
    ],
)
def test_generic_rule_on_transformers_models(model_type, expected):
    name, layer, _ = find_scoring_head(extraction_make_model(model_type))
    assert name == expected and isinstance(layer, nn.Linear)


def test_ambiguous_heads_are_refused_with_their_names():
    model = _RM("score")
    model.classifier = nn.Linear(4, 1)
    with pytest.raises(
        ValueError, match=r"cannot find the scoring layer of _RM.*'score', 'classifier'"
    ):
        find_scoring_head(model)


def test_known_name_breaks_a_tie():
    name, _, _ = find_scoring_head(_RM("score", extra=True))  # 'score' and 'other'
    assert name == "score"


def test_no_head_is_refused():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)

    with pytest.raises(ValueError, match=r"found none\. Pass head=HeadAdapter"):
        find_scoring_head(Plain())


def test_more_than_one_label_is_refused():
    model = extraction_make_model("llama", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2; a reward model has exactly one label"):
        find_scoring_head(model)


def test_adapter_by_name_and_by_callable():
    model = _RM("score", extra=True)
    assert find_scoring_head(model, "other")[0] == "other"
    adapter = HeadAdapter(lambda m: m.score, pooling="last_token")
    name, layer, pooling = find_scoring_head(model, adapter)
    assert (name, layer, pooling) == ("score", model.score, "last_token")


def test_adapter_errors():
    model = _RM()
    with pytest.raises(ValueError, match="has no submodule 'missing'"):
        find_scoring_head(model, "missing")
    with pytest.raises(TypeError, match="must be an nn.Linear, got _Backbone"):
        find_scoring_head(model, "backbone")
    with pytest.raises(ValueError, match="'backbone.proj' of _RM has 4 outputs"):
        find_scoring_head(model, "backbone.proj")
    with pytest.raises(ValueError, match="pooling must be one of"):
        HeadAdapter("score", pooling="mean")
    with pytest.raises(TypeError, match="layer must be a dotted module name or a callable"):
        HeadAdapter(3)


def _pooled_loop(ids, mask, pad):
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        keep = [i for i, t in enumerate(row) if (t != pad if pad is not None else m[i])]
        out.append(keep[-1] if keep else 0)
    return out


@pytest.mark.parametrize("pad", [0, None])
def test_pooled_index_matches_a_loop(pad):
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 0, 6, 0, 0], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert pooled_index(ids, mask, pad).tolist() == _pooled_loop(ids, mask, pad)
