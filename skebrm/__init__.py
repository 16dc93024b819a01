"""skebrm: energy-based reward models on top of frozen LLM reward models.

The estimator, the heads and the metrics import eagerly; the Hugging Face extraction
names (``EmbeddingExtractor``, ``load_cache``, ...), the policy samplers and the
baselines load on first access, so ``import skebrm`` does not import transformers.
"""

from importlib import import_module

from skebrm._version import __version__
from skebrm.bradley_terry import BradleyTerryHead, LaplaceBradleyTerryHead, fit_bradley_terry
from skebrm.calibrator import EnergyRewardCalibrator
from skebrm.distribution import GridDistribution
from skebrm.exceptions import GuardPowerWarning, RefinementWarning

_LAZY = {
    "BradleyTerryEnsemble": "skebrm.baselines",
    "MLPRewardHead": "skebrm.baselines",
    "EmbeddingExtractor": "skebrm.extraction",
    "ExtractionResult": "skebrm.extraction",
    "HeadAdapter": "skebrm.extraction",
    "SelfCheckError": "skebrm.extraction",
    "CacheCorruptError": "skebrm.extraction",
    "CacheIncompleteError": "skebrm.extraction",
    "CacheMismatchError": "skebrm.extraction",
    "extract_to_cache": "skebrm.extraction",
    "load_cache": "skebrm.extraction",
    "merge_caches": "skebrm.extraction",
    "build_reward_model": "skebrm.extraction",
    "load_minilm": "skebrm.extraction",
    "load_smollm2": "skebrm.extraction",
    "PolicySampler": "skebrm.sampling",
    "TransformersSampler": "skebrm.sampling",
    "LlamaCppSampler": "skebrm.sampling",
    "VLLMSampler": "skebrm.sampling",
    "sample_to_cache": "skebrm.sampling",
    "load_samples": "skebrm.sampling",
    "RefinedRewardModel": "skebrm.bundle",
    "RewardScores": "skebrm.bundle",
    "BundleMismatchError": "skebrm.bundle",
    "ModelIntegrityError": "skebrm.exceptions",
    "LengthDebiaser": "skebrm.debias",
    "MahalanobisScorer": "skebrm.ood",
    "PairSelector": "skebrm.selection",
    "SelectionWarning": "skebrm.selection",
    "StepChoice": "skebrm.steps",
    "choose_step": "skebrm.steps",
}

__all__ = [
    "BradleyTerryHead",
    "EnergyRewardCalibrator",
    "GridDistribution",
    "GuardPowerWarning",
    "LaplaceBradleyTerryHead",
    "RefinementWarning",
    "__version__",
    "fit_bradley_terry",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'skebrm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
