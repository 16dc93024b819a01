"""
Save and load a RefinedRewardModel, and call it as a TRL reward function
========================================================================

A ``RefinedRewardModel`` holds a Hugging Face reward model, the extraction settings its
calibrator was fitted with and the calibrator. It scores ``(prompt, completion)`` texts,
saves and loads without pickle, and, called with TRL's reward-function signature, returns
``refined − penalty · std`` per completion. This example uses the offline MiniLM reward
model and a small sample of the bundled HH-RLHF harmless pairs.
"""

import tempfile
from pathlib import Path

import numpy as np

from skebrm import EnergyRewardCalibrator, RefinedRewardModel
from skebrm.datasets import load_hh_rlhf_harmless
from skebrm.extraction import EmbeddingExtractor, load_minilm

pairs = load_hh_rlhf_harmless(n=60)
rm, tokenizer = load_minilm()  # a seeded head on MiniLM; any one-label HF RM works
extractor = EmbeddingExtractor(rm, tokenizer, max_length=64).fit()
res = extractor.extract(pairs)
print(res.embeddings.shape, res.rewards.shape)

calibrator = EnergyRewardCalibrator(energy="basis", max_epochs=5, random_state=0)
calibrator.fit(res.embeddings, res.rewards, **res.fit_params())
reward = RefinedRewardModel(
    rm, tokenizer, calibrator, max_length=64, penalty=0.5, fitted_on=extractor.identity()
)

# %%
# Scores of two completions of one prompt: base reward, refined reward and its std.
prompts = [pairs[0]["prompt"]] * 2
completions = [pairs[0]["chosen"], pairs[0]["rejected"]]
scores = reward.score(prompts, completions)
print("base   ", np.round(scores.base_reward, 3))
print("refined", np.round(scores.refined_reward, 3))
print("std    ", np.round(scores.std, 3))

# %%
# Save, load, and call it the way TRL's GRPOTrainer calls a reward function.
with tempfile.TemporaryDirectory() as tmp:
    path = reward.save_pretrained(Path(tmp) / "ebrm-minilm")
    print(sorted(p.name for p in Path(path).iterdir()))
    loaded = RefinedRewardModel.from_pretrained(path)
    rewards = loaded(prompts=prompts, completions=completions)
print("refined − 0.5 · std:", np.round(rewards, 3))
