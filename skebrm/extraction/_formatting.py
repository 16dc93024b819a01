"""Formatting (prompt, response) rows into token ids, with prompt-first truncation.

A row becomes ``pre + prompt + mid + response + post``. With a chat template the three
glue strings come from rendering a two-message conversation (user prompt, assistant
response) with sentinels; otherwise from a format string such as
:data:`DEFAULT_TEMPLATE`. The whole string is tokenized at once, so the ids are exactly
those the tokenizer gives for the formatted text.

Truncation (documented behaviour)
---------------------------------
When a row is longer than ``max_length`` tokens, the *prompt* is cut from the left, so
its oldest turns go first; the cut point moves forward to the next whitespace so no word
is split. The response is never cut while any prompt text is left. If the response
alone (with the template and an empty prompt) still does not fit, ``long_response``
decides: ``"truncate"`` keeps the start of the response and cuts its end,
``"error"`` raises. Both counts are reported.

Conversations
-------------
:func:`conversation_prompt` turns a list of ``{"role", "content"}`` messages into the
prompt string of a row whose rendering is exactly the chat template's rendering of the
messages followed by the response as the assistant turn. Usually that prompt is the text
between the template's ``pre`` and ``mid``. When the conversation opens differently from
the template's two-message rendering (its own system message where the template inserts
a default one), the prompt carries the whole rendered opening instead, and ``pre`` is not
added for that row; truncation then cuts that opening first, like any other prompt text.

Empty texts (documented behaviour)
----------------------------------
An empty prompt or an empty response is allowed (real preference data contains empty
responses, and a reward model can score them); a row whose prompt and response are both
empty or whitespace-only is refused with a ``ValueError``. Non-string texts raise
``TypeError``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_TEMPLATE",
    "EncodedRows",
    "RowTemplate",
    "conversation_prompt",
    "encode_rows",
    "resolve_template",
]

DEFAULT_TEMPLATE = "{prompt}\n\n{response}"
"""Template for tokenizers without a chat template (special tokens are added by the tokenizer)."""

_P, _R = "\x00skebrm_prompt\x00", "\x00skebrm_response\x00"
# A prompt that starts with this carries its own rendered opening (see conversation_prompt).
_OPENED = "\x00skebrm_opened\x00"


@dataclass(frozen=True)
class RowTemplate:
    """The glue around a row: ``pre + prompt + mid + response + post``.

    ``add_special_tokens`` is False for chat templates (they render their own special
    tokens) and True for format strings. ``name`` identifies the template in cache keys.
    """

    pre: str
    mid: str
    post: str
    add_special_tokens: bool
    name: str

    def render(self, prompt: str, response: str) -> str:
        tpl, prompt = self.for_prompt(prompt)
        return f"{tpl.pre}{prompt}{tpl.mid}{response}{tpl.post}"

    def for_prompt(self, prompt: str) -> tuple[RowTemplate, str]:
        """The template and prompt text of one row: a prompt made by
        :func:`conversation_prompt` with its own opening gets a template without ``pre``."""
        if isinstance(prompt, str) and prompt.startswith(_OPENED):
            return RowTemplate("", self.mid, self.post, self.add_special_tokens, self.name), prompt[
                len(_OPENED) :
            ]
        return self, prompt


def _split_sentinels(text: str, source: str) -> tuple[str, str, str]:
    if text.count(_P) != 1 or text.count(_R) != 1 or text.index(_P) > text.index(_R):
        raise ValueError(
            f"EmbeddingExtractor: the {source} does not place the prompt and the response "
            "verbatim and in order (it rewrites or drops message content); pass "
            "template='{prompt}...{response}' (a format string) instead."
        )
    pre, rest = text.split(_P)
    mid, post = rest.split(_R)
    return pre, mid, post


def resolve_template(tokenizer, template: str | None = "auto") -> RowTemplate:
    """Turn the ``template`` parameter into a :class:`RowTemplate`.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
    template : {"auto", "chat"} or str or None
        ``"auto"`` / ``None``: the tokenizer's chat template when it has one, else
        :data:`DEFAULT_TEMPLATE`. ``"chat"``: the chat template (error if absent). Any
        other string is a format string with exactly one ``{prompt}`` and one
        ``{response}`` field.
    """
    if template is None:
        template = "auto"
    if not isinstance(template, str):
        raise TypeError(
            "EmbeddingExtractor: template must be 'auto', 'chat' or a format string with "
            f"{{prompt}} and {{response}}, got {type(template).__name__}: {template!r}."
        )
    chat = getattr(tokenizer, "chat_template", None)
    if template == "chat" and not chat:
        raise ValueError(
            "EmbeddingExtractor: template='chat' but the tokenizer has no chat_template; use "
            "template='auto' or a format string."
        )
    if template in ("auto", "chat") and chat:
        messages = [
            {"role": "user", "content": _P},
            {"role": "assistant", "content": _R},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        pre, mid, post = _split_sentinels(text, "tokenizer's chat template")
        digest = hashlib.sha256(str(chat).encode()).hexdigest()[:16]
        return RowTemplate(pre, mid, post, add_special_tokens=False, name=f"chat:{digest}")
    fmt = DEFAULT_TEMPLATE if template == "auto" else template
    if fmt.count("{prompt}") != 1 or fmt.count("{response}") != 1:
        raise ValueError(
            "EmbeddingExtractor: template must contain '{prompt}' and '{response}' once "
            f"each, got {fmt!r}."
        )
    try:
        text = fmt.format(prompt=_P, response=_R)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"EmbeddingExtractor: template {fmt!r} is not a valid format string ({exc}); "
            "escape literal braces as '{{' and '}}'."
        ) from exc
    pre, mid, post = _split_sentinels(text, f"template {fmt!r}")
    return RowTemplate(pre, mid, post, add_special_tokens=True, name=f"format:{fmt}")


def conversation_prompt(tokenizer, template: RowTemplate, messages) -> str:
    """The prompt of a row that renders ``messages`` + the response through the chat template.

    ``template.render(conversation_prompt(tokenizer, template, messages), response)`` is
    ``tokenizer.apply_chat_template(messages + [{"role": "assistant", "content":
    response}], tokenize=False)`` (see the module docstring).

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        With a chat template; ``template`` was resolved from it.
    template : RowTemplate
        A chat template's pieces (:func:`resolve_template`).
    messages : list of dict
        ``{"role": str, "content": str}`` messages, the conversation before the response.

    Returns
    -------
    str
    """
    if template.add_special_tokens or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "conversation_prompt needs a chat template: the tokenizer has none, or the row "
            f"template is a format string ({template.name!r}); flatten the conversation to "
            "text instead."
        )
    full = [*messages, {"role": "assistant", "content": _R}]
    text = tokenizer.apply_chat_template(full, tokenize=False)
    if text.count(_R) != 1 or not text.endswith(_R + template.post):
        raise ValueError(
            "conversation_prompt: the tokenizer's chat template renders this conversation's "
            "last assistant turn differently from a two-message conversation's, so its "
            "rendering does not split into prompt + response; flatten the conversation to "
            "text instead."
        )
    head = text[: -len(_R + template.post)]
    if not head.endswith(template.mid):
        raise ValueError(
            "conversation_prompt: the tokenizer's chat template renders this conversation "
            "without the text that opens the assistant turn of a two-message conversation "
            f"({template.mid!r}); flatten the conversation to text instead."
        )
    head = head[: len(head) - len(template.mid)]
    if head.startswith(template.pre):
        return head[len(template.pre) :]
    return _OPENED + head


@dataclass
class EncodedRows:
    """Token ids per row plus truncation flags (``prompt_cut``, ``response_cut``: bool arrays)."""

    input_ids: list[list[int]]
    prompt_cut: np.ndarray
    response_cut: np.ndarray


def check_texts(prompts, responses) -> None:
    """Type and emptiness checks with row-level messages (see module docstring)."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"EmbeddingExtractor: got {len(prompts)} prompts and {len(responses)} responses."
        )
    for i, (p, r) in enumerate(zip(prompts, responses)):
        for name, value in (("prompt", p), ("response", r)):
            if not isinstance(value, str):
                raise TypeError(
                    f"EmbeddingExtractor: row {i}: the {name} must be a str, got "
                    f"{type(value).__name__}: {value!r:.60}."
                )
        if not p.strip() and not r.strip():
            raise ValueError(
                f"EmbeddingExtractor: row {i}: the prompt and the response are both empty; "
                "there is nothing to score (drop the row)."
            )


def _next_space(text: str, start: int) -> int:
    """First index >= start that begins a word (after whitespace), or len(text)."""
    if start <= 0:
        return 0
    n = len(text)
    i = start
    if i < n and text[i - 1].isspace():
        return i
    while i < n and not text[i].isspace():
        i += 1
    while i < n and text[i].isspace():
        i += 1
    return i


def _encode_one(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens, truncation=False)["input_ids"]


def _fit_row(
    tokenizer,
    tpl: RowTemplate,
    prompt: str,
    response: str,
    max_length: int,
    long_response: str,
    row: int,
    offsets=None,
):
    """Cut one over-long row; returns (ids, prompt_cut, response_cut)."""

    def ids_for(p: str, r: str) -> list[int]:
        return _encode_one(tokenizer, tpl.render(p, r), tpl.add_special_tokens)

    # Smallest left cut of the prompt (in characters) that fits: binary search, then
    # move to the next word start and make sure it still fits.
    n = len(prompt)
    empty_prompt_ids = ids_for("", response)
    if len(empty_prompt_ids) <= max_length:
        lo, hi = 0, n  # ids_for(prompt[hi:]) fits, ids_for(prompt[lo:]) does not
        if offsets is not None:
            # Narrow the search with the full text's token offsets: dropping the first
            # `excess` prompt tokens should just fit.
            start = len(tpl.pre)
            starts = [a - start for a, b in offsets if b > a and start <= a < start + n]
            excess = len(offsets) - max_length
            if 0 < excess < len(starts):
                guess, before = starts[excess], starts[excess - 1]
                if len(ids_for(prompt[guess:], response)) <= max_length:
                    hi = guess
                    if len(ids_for(prompt[before:], response)) > max_length:
                        lo = before
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if len(ids_for(prompt[mid:], response)) <= max_length:
                hi = mid
            else:
                lo = mid
        cut = _next_space(prompt, hi)
        ids = ids_for(prompt[cut:], response)
        while len(ids) > max_length:  # tokenization is not exactly monotone
            cut = _next_space(prompt, cut + 1)
            ids = ids_for(prompt[cut:], response)
        return ids, True, False
    if long_response == "error":
        raise ValueError(
            f"EmbeddingExtractor: row {row}: the response alone is {len(empty_prompt_ids)} "
            f"tokens with the template, above max_length={max_length}; raise max_length or "
            "set long_response='truncate' to cut the end of such responses."
        )
    lo, hi = 0, len(response)  # response[:lo] fits, response[:hi] does not
    if len(ids_for("", "")) > max_length:
        raise ValueError(
            f"EmbeddingExtractor: max_length={max_length} is shorter than the template "
            f"itself ({len(ids_for('', ''))} tokens)."
        )
    if getattr(tokenizer, "is_fast", False):
        # Narrow the search with the token offsets of the response without its prompt.
        enc = tokenizer(
            tpl.render("", response),
            add_special_tokens=tpl.add_special_tokens,
            return_offsets_mapping=True,
        )
        start = len(tpl.pre) + len(tpl.mid)
        ends = [b - start for a, b in enc["offset_mapping"] if b > a and start <= a]
        ends = [e for e in ends if e <= len(response)]
        keep = len(ends) - (len(enc["input_ids"]) - max_length)
        if 0 < keep < len(ends):
            guess, after = ends[keep - 1], ends[keep]
            if len(ids_for("", response[:guess])) <= max_length:
                lo = guess
                if len(ids_for("", response[:after])) > max_length:
                    hi = after
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(ids_for("", response[:mid])) <= max_length:
            lo = mid
        else:
            hi = mid
    ids = ids_for("", response[:lo])
    while len(ids) > max_length and lo > 0:
        lo -= 1
        ids = ids_for("", response[:lo])
    return ids, bool(prompt), True


def encode_rows(
    tokenizer,
    prompts,
    responses,
    *,
    template: RowTemplate,
    max_length: int,
    long_response: str = "truncate",
) -> EncodedRows:
    """Tokenize rows with ``template``, cutting over-long ones (see module docstring)."""
    check_texts(prompts, responses)
    rows = [template.for_prompt(p) for p in prompts]
    texts = [tpl.render(p, r) for (tpl, p), r in zip(rows, responses)]
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = (
        tokenizer(
            texts,
            add_special_tokens=template.add_special_tokens,
            truncation=False,
            return_offsets_mapping=fast,
        )
        if texts
        else {"input_ids": []}
    )
    ids = enc["input_ids"]
    offsets = enc.get("offset_mapping") if fast else None
    n = len(texts)
    prompt_cut = np.zeros(n, dtype=bool)
    response_cut = np.zeros(n, dtype=bool)
    for i, row_ids in enumerate(ids):
        if len(row_ids) > max_length:
            ids[i], prompt_cut[i], response_cut[i] = _fit_row(
                tokenizer,
                rows[i][0],
                rows[i][1],
                responses[i],
                max_length,
                long_response,
                i,
                None if offsets is None else offsets[i],
            )
    return EncodedRows(list(ids), prompt_cut, response_cut)
