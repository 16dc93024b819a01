"""Embedding extraction from Hugging Face reward models, the embedding cache and backbones.

``EmbeddingExtractor`` returns, for each (prompt, response) row, the reward model's
embedding ``e`` (input of its final scoring layer) and its reward ``r``;
``extract_to_cache`` / ``load_cache`` store them in a resumable sharded cache;
``load_minilm`` / ``load_smollm2`` and ``build_reward_model`` give real reward models
offline.
"""

from skebrm.extraction._formatting import DEFAULT_TEMPLATE
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
