"""
Best-of-n over-optimisation on a synthetic gold reward
======================================================

Best-of-n picks the proxy's favourite of ``n`` samples. When the proxy rewards something
the gold reward only likes in moderation, the gold reward of the pick rises, peaks and
falls as ``n`` grows (Gao et al. 2023). Here the gold reward is ``t + 0.2·v·x − 0.5·t²``
and the proxies see ``t``; EBRM's ``refined − std`` penalises the samples it is unsure of.
"""

import matplotlib.pyplot as plt
import numpy as np

from skebrm import EnergyRewardCalibrator
from skebrm.metrics import best_of_n_curve

rng = np.random.default_rng(0)
n_prompts, n_samples, d = 80, 32, 8
F = rng.normal(size=(n_prompts, n_samples, d)).astype(np.float32)  # sample features
t, v, x = F[..., 0], F[..., 1], F[..., 2]
gold = t + 0.2 * v * x - 0.5 * t**2
noise = np.where(t > 1.0, 1.0, 0.2)  # the proxy is unreliable where it over-rewards
proxy = t + noise * rng.normal(size=t.shape)

# EBRM on the proxy's "embeddings" and rewards of half the prompts
train = slice(0, 40)
ebrm = EnergyRewardCalibrator(
    objective="grid_nll",
    energy="basis",
    grid_size=128,
    max_epochs=6,
    learning_rate=3e-3,
    random_state=0,
)
ebrm.fit(F[train].reshape(-1, d), proxy[train].ravel())

test = slice(40, None)
Ft, flat = F[test].reshape(-1, d), proxy[test].ravel()
refined, std = ebrm.predict(Ft, base_reward=flat, return_std=True)
proxies = {
    "base proxy": proxy[test],
    "EBRM refined": refined.reshape(-1, n_samples),
    "EBRM refined − 1·std": (refined - std).reshape(-1, n_samples),
    "oracle": gold[test],
}

# %%
ns = [1, 2, 4, 8, 16, 32]
fig, ax = plt.subplots(figsize=(6, 4))
for name, scores in proxies.items():
    curve = best_of_n_curve(scores, gold[test], ns, n_resamples=200, random_state=0)
    style = {"ls": "--", "color": "grey"} if name == "oracle" else {"marker": "o", "ms": 3}
    ax.plot(curve.kl, curve.mean, label=name, **style)
    if name != "oracle":
        ax.fill_between(curve.kl, curve.ci_low, curve.ci_high, alpha=0.15)
    print(f"{name}: peak at n = {curve.peak()['peak_n']}, gold {curve.peak()['peak_gold']:+.3f}")
ax.set(xlabel="KL(best-of-n ‖ policy) bound, nats", ylabel="gold reward of the pick")
ax.legend(fontsize=8)
fig.tight_layout()
