"""TRL's reward-function convention for :class:`~skebrm.RefinedRewardModel`.

TRL's ``GRPOTrainer`` calls every entry of ``reward_funcs`` that is not an ``nn.Module`` as
``f(prompts=..., completions=..., completion_ids=..., **kwargs)``, where ``kwargs`` hold the
dataset's other columns, ``trainer_state``, ``log_extra`` and ``log_metric``; it expects one
float per completion (``None``: no reward for that row) and names the function by its
``__name__``. A bundle is such a callable; this module holds the conversion, which needs no
``trl`` import.

Conversations
-------------
In TRL's conversational format a prompt is a list of ``{"role", "content"}`` messages and a
completion is a list of (assistant) messages. A row becomes ``(prompt, completion)`` text
for the RM's template as follows:

* the completion is the content of its messages, joined by a blank line (usually one
  assistant message);
* when the RM's row template is its tokenizer's chat template (``template="auto"`` on a
  tokenizer that has one, or ``"chat"``), the prompt's messages go through that template,
  with the completion as the assistant turn: the RM sees exactly
  ``apply_chat_template(messages + [{"role": "assistant", "content": completion}])``
  (:func:`~skebrm.extraction._formatting.conversation_prompt`); a prompt of one user
  message is then its content, as below;
* otherwise (an RM without a chat template, or a format-string template), a prompt of one
  user message is its content, and any other prompt (several turns, or a system message)
  is flattened to a transcript, ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."``
  (``System: `` for system messages), the convention of the HH-RLHF prompts that RMs
  trained on such text (and the project's data) use.

Content given as a list of parts (``[{"type": "text", "text": ...}]``) is the concatenation
of its text parts; a non-text part raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["ROLE_LABELS", "completion_text", "prompt_text", "to_rows", "trl_reward"]

ROLE_LABELS = {"user": "Human", "assistant": "Assistant", "system": "System"}
"""The turn label of each message role when a conversation is flattened into a prompt."""


def _content(message, where: str) -> str:
    if not isinstance(message, dict) or "content" not in message or "role" not in message:
        raise ValueError(
            f"{where} must be a message dict with 'role' and 'content', got {message!r:.80}."
        )
    content = message["content"]
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"{where} has a content part of type {kind!r}; a reward model scores text "
                    "only (parts of type 'text')."
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise ValueError(
        f"{where}: content must be a str or a list of text parts, got "
        f"{type(content).__name__}: {content!r:.60}."
    )


def prompt_text(prompt, where: str = "prompt") -> str:
    """A TRL prompt (str or list of messages) as one prompt string (see module docstring).

    Parameters
    ----------
    prompt : str or list of dict
        A prompt string, or a conversation of ``{"role", "content"}`` messages.
    where : str, default="prompt"
        Names the prompt in error messages.

    Returns
    -------
    str
        The prompt itself, a lone user message's text, or the turns as
        ``"<Label>: <text>"`` joined by blank lines.
    """
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(
            f"{where} must be a str or a list of messages, got {type(prompt).__name__}: "
            f"{prompt!r:.60}."
        )
    texts = [_content(m, f"{where}[{i}]") for i, m in enumerate(prompt)]
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return texts[0]
    turns = []
    for i, (message, text) in enumerate(zip(prompt, texts)):
        role = message["role"]
        label = ROLE_LABELS.get(role)
        if label is None:
            label = str(role).capitalize()
            if not label:
                raise ValueError(f"{where}[{i}] has an empty role.")
        turns.append(f"{label}: {text}")
    return "\n\n".join(turns)


def _chat_prompt(prompt, tokenizer, template, where: str) -> str:
    """A conversation prompt through the RM's chat template; a str prompt as it is."""
    from skebrm.extraction._formatting import conversation_prompt

    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)):
        return prompt_text(prompt, where)  # raises the usual error
    messages = [
        {"role": m["role"], "content": _content(m, f"{where}[{i}]")} for i, m in enumerate(prompt)
    ]
    try:
        return conversation_prompt(tokenizer, template, messages)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def completion_text(completion, where: str = "completion") -> str:
    """A TRL completion (str or list of messages) as the response string.

    Parameters
    ----------
    completion : str or list of dict
        A completion string, or a list of ``{"role", "content"}`` messages.
    where : str, default="completion"
        Names the completion in error messages.

    Returns
    -------
    str
        The completion itself, or its messages' texts joined by blank lines.
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, (list, tuple)):
        raise ValueError(
            f"{where} must be a str or a list of messages, got {type(completion).__name__}: "
            f"{completion!r:.60}."
        )
    return "\n\n".join(_content(m, f"{where}[{i}]") for i, m in enumerate(completion))


def _is_chat(template) -> bool:
    return template is not None and not template.add_special_tokens


def to_rows(
    prompts,
    completions,
    caller: str = "RefinedRewardModel",
    *,
    tokenizer=None,
    template=None,
) -> tuple[list, list]:
    """Prompt and completion strings of TRL's ``prompts`` / ``completions`` arguments.

    Parameters
    ----------
    prompts, completions : list
        Strings or conversations (lists of messages), one per completion.
    caller : str
        Named in error messages.
    tokenizer : PreTrainedTokenizerBase, optional
        The RM's tokenizer.
    template : RowTemplate, optional
        The RM's row template. When the template is the tokenizer's chat template,
        conversation prompts go through it; otherwise they are flattened (see the module
        docstring).

    Returns
    -------
    prompts : list of str
        The prompt string of each completion.
    completions : list of str
        The completion strings.
    """
    for name, value in (("prompts", prompts), ("completions", completions)):
        if value is None:
            raise TypeError(f"{caller}: {name} is required (TRL passes prompts= and completions=).")
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise TypeError(
                f"{caller}: {name} must be a list (one entry per completion), got "
                f"{type(value).__name__}."
            )
    if len(prompts) != len(completions):
        raise ValueError(
            f"{caller}: prompts and completions must have the same length, got "
            f"{len(prompts)} and {len(completions)}."
        )
    if _is_chat(template) and tokenizer is not None:
        p = [
            _chat_prompt(x, tokenizer, template, f"{caller}: prompts[{i}]")
            for i, x in enumerate(prompts)
        ]
    else:
        p = [prompt_text(x, f"{caller}: prompts[{i}]") for i, x in enumerate(prompts)]
    c = [completion_text(x, f"{caller}: completions[{i}]") for i, x in enumerate(completions)]
    return p, c


def trl_reward(bundle, prompts, completions, **kwargs) -> list[float | None]:
    """The reward of the bundle's step served (``RewardScores.served``; by default
    ``refined − penalty · std``) for TRL; logs the mean std when ``log_metric`` is passed.

    Rows whose prompt and completion are both empty (nothing to score) get ``None``.
    Conversations go through the RM's chat template when its row template is one, else
    they are flattened (see the module docstring).

    Parameters
    ----------
    bundle : RefinedRewardModel
        The bundle that scores the completions.
    prompts, completions : list
        Strings or conversations (lists of messages), one per completion.
    **kwargs
        Further arguments TRL passes; only ``log_metric`` is used.

    Returns
    -------
    list of float or None
        One reward per completion; ``None`` where there is nothing to score or the
        reward is not finite.
    """
    extractor = getattr(bundle, "extractor", None)
    p, c = to_rows(
        prompts,
        completions,
        tokenizer=getattr(extractor, "tokenizer_", None),
        template=getattr(extractor, "template_", None),
    )
    keep = [i for i, (a, b) in enumerate(zip(p, c)) if a.strip() or b.strip()]
    out: list[float | None] = [None] * len(p)
    if not keep:
        return out
    scores = bundle.score([p[i] for i in keep], [c[i] for i in keep])
    rewards = scores.served(bundle.penalty)
    for i, r in zip(keep, rewards):
        out[i] = float(r) if np.isfinite(r) else None
    log_metric: Callable | None = kwargs.get("log_metric")
    if callable(log_metric):
        log_metric(f"{bundle.__name__}/reward_std", float(np.mean(scores.std)))
        log_metric(f"{bundle.__name__}/base_reward", float(np.mean(scores.base_reward)))
    return out
