"""Embedding extraction from Hugging Face reward models, the embedding cache and backbones.

``EmbeddingExtractor`` returns, for each (prompt, response) row, the reward model's
embedding ``e`` (input of its final scoring layer) and its reward ``r``;
``extract_to_cache`` / ``load_cache`` store them in a resumable sharded cache;
``load_minilm`` / ``load_smollm2`` and ``build_reward_model`` give real reward models
offline.
"""

from skebrm.extraction import _formatting
from skebrm.extraction._heads import HeadAdapter, find_scoring_head
from skebrm.extraction.backbones import convert_smollm2, load_minilm, load_smollm2
from skebrm.extraction.cache import (
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    CacheReport,
    extract_to_cache,
    load_cache,
    merge_caches,
)
from skebrm.extraction.extractor import EmbeddingExtractor, ExtractionResult, SelfCheckError
from skebrm.extraction.reward_model import build_reward_model

# bound here, with its documentation, so that it is found under this module's name
DEFAULT_TEMPLATE: str = _formatting.DEFAULT_TEMPLATE
"""Template for tokenizers without a chat template (special tokens are added by the tokenizer)."""

__all__ = [
    "DEFAULT_TEMPLATE",
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheReport",
    "EmbeddingExtractor",
    "ExtractionResult",
    "HeadAdapter",
    "SelfCheckError",
    "build_reward_model",
    "convert_smollm2",
    "extract_to_cache",
    "find_scoring_head",
    "load_cache",
    "load_minilm",
    "load_smollm2",
    "merge_caches",
]
