"""The policy-sampler interface shared by every backend, and chat formatting of prompts.

A :class:`PolicySampler` draws ``n_samples`` completions for each prompt of a list. Every
backend takes the same sampling settings, under the same names (the constructor
parameters are also the keys of ``conf/sampler/*.yaml``):

* ``temperature`` (default 1.0: the policy's own distribution);
* ``top_p`` (1.0: off) and ``top_k`` (0: off);
* ``max_new_tokens`` (96).

The model is loaded on first use (``load``), so a sampler is cheap to build from a
config. :meth:`PolicySampler.identity` describes everything that determines the samples
(backend, policy, a fingerprint of its weights, the settings, the chat template) and is
the key of the sample cache (:mod:`skebrm.sampling.cache`).

Prompts in the shared schema are flattened transcripts (HH-RLHF:
``"Human: … \\n\\nAssistant: … \\n\\nHuman: …"``); :func:`prompt_messages` turns them
back into chat messages, so an instruction-tuned policy sees its own chat format.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

__all__ = ["FINISH_REASONS", "Completion", "PolicySampler", "prompt_messages"]

FINISH_REASONS = ("stop", "length")
"""``"stop"``: the policy ended its turn; ``"length"``: cut at ``max_new_tokens``."""

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):\s?")


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    Parameters
    ----------
    text : str
        The decoded completion, without the stop token.
    n_tokens : int
        Tokens generated, the stop token included.
    finish_reason : {"stop", "length"}
        ``"stop"`` if the policy ended its turn, ``"length"`` if it was cut at
        ``max_new_tokens``.
    """

    text: str
    n_tokens: int
    finish_reason: str


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages of a prompt: HH-style ``Human:`` / ``Assistant:`` turns, else one user turn.

    Parameters
    ----------
    prompt : str
        The prompt, with HH-style turns or as plain text.

    Returns
    -------
    list of dict
        One ``{"role": ..., "content": ...}`` message per turn, roles ``"user"`` and
        ``"assistant"``; a trailing empty assistant turn is dropped.

    Examples
    --------
    >>> prompt_messages("Human: hi\\n\\nAssistant: hello\\n\\nHuman: how are you?")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}, \
{'role': 'user', 'content': 'how are you?'}]
    >>> prompt_messages("Write a haiku.")
    [{'role': 'user', 'content': 'Write a haiku.'}]
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt_messages: prompt must be a str, got {type(prompt).__name__}.")
    marks = list(_TURN.finditer(prompt))
    if not marks or marks[0].start() != 0:
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(prompt)
        role = "user" if m.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": prompt[m.end() : end].strip()})
    while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # a trailing "Assistant:" cue: the generation prompt adds it
    return messages


class PolicySampler(ABC):
    """Draws completions from a policy; subclasses implement :meth:`load` and :meth:`sample`.

    Parameters
    ----------
    temperature : float, default=1.0
        Sampling temperature, > 0 (greedy decoding is not a policy sample).
    top_p : float, default=1.0
        Nucleus sampling; 1.0 is off.
    top_k : int, default=0
        0 is off.
    max_new_tokens : int, default=96
        Most tokens generated per completion.
    """

    backend: str = ""

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 96,
    ):
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens

    def _check_settings(self) -> None:
        name = type(self).__name__
        if not isinstance(self.temperature, Real) or not self.temperature > 0:
            raise ValueError(
                f"{name}: temperature must be a float > 0, got {self.temperature!r} "
                "(greedy decoding is not a policy sample)."
            )
        if not isinstance(self.top_p, Real) or not 0 < self.top_p <= 1:
            raise ValueError(f"{name}: top_p must be in (0, 1] (1: off), got {self.top_p!r}.")
        if not isinstance(self.top_k, Integral) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"{name}: top_k must be an int >= 0 (0: off), got {self.top_k!r}.")
        if (
            not isinstance(self.max_new_tokens, Integral)
            or isinstance(self.max_new_tokens, bool)
            or self.max_new_tokens < 1
        ):
            raise ValueError(
                f"{name}: max_new_tokens must be a positive int, got {self.max_new_tokens!r}."
            )

    def settings(self) -> dict:
        """The sampling settings, as stored in cache keys.

        Returns
        -------
        dict
            ``temperature``, ``top_p``, ``top_k`` and ``max_new_tokens``.
        """
        return {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": int(self.top_k),
            "max_new_tokens": int(self.max_new_tokens),
        }

    @abstractmethod
    def load(self) -> PolicySampler:
        """Load the policy (idempotent); returns ``self``."""

    @abstractmethod
    def identity(self) -> dict:
        """Everything that determines the samples: backend, policy, weights, settings."""

    @abstractmethod
    def _sample(self, prompts: list[str], n_samples: int, seed: int) -> list[list[Completion]]:
        """Backend part of :meth:`sample` (inputs already checked)."""

    def sample(
        self, prompts: Sequence[str], n_samples: int, *, seed: int = 0
    ) -> list[list[Completion]]:
        """``n_samples`` completions for each prompt.

        Parameters
        ----------
        prompts : sequence of str
            Prompts in the shared schema (see :func:`prompt_messages`).
        n_samples : int
            Completions to draw for each prompt, >= 1.
        seed : int, default=0
            Seeds this call: the same call with the same seed, settings and batch layout
            gives the same completions on the same hardware.

        Returns
        -------
        list of list of Completion
            ``result[i][j]`` is sample ``j`` of prompt ``i``.
        """
        name = type(self).__name__
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{name}.sample: prompts must be a non-empty sequence of str.")
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"{name}.sample: n_samples must be a positive int, got {n_samples!r}.")
        if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{name}.sample: seed must be an int >= 0, got {seed!r}.")
        self._check_settings()
        self.load()
        out = self._sample(prompts, int(n_samples), int(seed))
        if len(out) != len(prompts) or any(len(row) != n_samples for row in out):
            raise RuntimeError(f"{name}.sample: the backend returned a wrong number of samples.")
        return out
