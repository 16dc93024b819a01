"""The reward server: OpenRLHF's remote reward-model contract on FastAPI.

``POST /get_reward`` takes ``{"query": [texts], "prompts": [...], "labels": [...]}``
(``prompts`` and ``labels`` optional), as OpenRLHF's remote reward client sends it, and
answers::

    {"rewards": [the reward of the bundle's step served, ...],
     "scores": [refined, ...],
     "extra_logs": {"reward_std": [...], "base_reward": [...]}}

one entry per text, in order. Each ``query`` is prompt + response: with ``prompts`` the
response is what follows the prompt (a query that does not start with its prompt is
refused, unless it starts with the prompt's last :data:`MIN_PROMPT_OVERLAP` or more
characters: OpenRLHF cuts a prompt too long for its budget from the left, keeping its
last tokens, and sends the whole prompt beside the query; the RM then scores the response
against the whole prompt); without them the whole query is scored as a response to an
empty prompt.
``labels`` are accepted and ignored. The rewards are those of the bundle's step served
(``RewardScores.served``; by default ``refined − λ·std``). ``GET /health`` reports the
model, the step served (``step``) and why it was chosen (``step_reason``: the reason of
the bundle's step choice, None when the step was not chosen by ``fit_guard(steps=...)``),
and the limits.

Special tokens
--------------
OpenRLHF decodes its queries with the *policy's* tokenizer and
``skip_special_tokens=False``: today one query per request, ``decode(prompt ids +
response ids)``, which ends with the policy's end-of-turn token; older versions
batch-decode left-padded sequences, so queries start with pad tokens (and often a doubled
BOS) and end with eos + pad tokens. Before the prefix check, the server therefore strips
:attr:`ServerSettings.strip_tokens`, repeated, from both ends of every query and every
prompt (whitespace between two such tokens goes with them), then from both ends of the
response; special tokens inside the text are kept. By default these are the RM
tokenizer's own pad / eos / BOS tokens (OpenRLHF's ``serve_rm`` also strips its pad and
eos); ``skebrm-serve --policy-tokenizer DIR`` adds the policy's and ``--strip-token``
any other (``<|im_end|>``, ``<|endoftext|>``). The RM's template adds its own special
tokens around the prompt and the response.

Bad input gets a 4xx JSON answer ``{"detail": "..."}`` that names the problem: 400 for a
body that is not JSON (also JSON nested too deeply or with an integer of more than 4,300
digits), 422 for wrong types, empty or misaligned lists, 413 for a request over the
limits (bytes, texts per request, characters per text); 503 when too many texts are
already waiting. Requests are validated before they join a batch, so a bad request never
touches the others; a large body is parsed on a worker thread, so it does not hold up the
other clients. An unexpected error gets a 500 with a fixed message (the server's log has
the traceback). Nothing on this path unpickles: requests are JSON, and the bundle loads
from safetensors and JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from skebrm.serving.batcher import MicroBatcher, ServerBusyError, check_chunk_size

__all__ = [
    "RequestError",
    "ServerSettings",
    "create_app",
    "parse_json",
    "parse_reward_request",
    "special_tokens",
    "strip_token_sources",
]

#: Bodies larger than this are parsed on a worker thread instead of the event loop.
THREADED_PARSE_BYTES = 256 * 1024
#: The fewest characters of a prompt's end that a query must start with to be read as
#: that prompt cut from the left (OpenRLHF keeps a long prompt's last tokens).
MIN_PROMPT_OVERLAP = 32


@dataclass(frozen=True)
class ServerSettings:
    """Limits and batching of the reward server.

    Parameters
    ----------
    max_batch_size : int
        Texts scored together (concurrent requests are micro-batched up to this).
    max_wait_ms : float
        How long a request waits for others to join its batch.
    max_texts_per_request : int
        Texts in one request's ``query``.
    max_chars_per_text : int
        Characters of one ``query`` entry.
    max_request_bytes : int
        Size of a request body.
    max_pending_texts : int
        Texts allowed to wait for scoring; beyond it requests get 503. At least
        ``max_texts_per_request`` (else a full-size request could never be queued).
    strip_suffixes : tuple of str
        Strings removed (repeatedly) from the end of every response before scoring.
    strip_tokens : tuple of str or None
        Special tokens removed (repeatedly) from both ends of every query, prompt and
        response, before the prefix check (see the module docstring). None:
        :func:`create_app` uses the RM tokenizer's pad / eos / BOS tokens; ``()`` strips
        none.
    score_chunk_size : int or None
        Texts per scoring call: a micro-batch is scored in chunks of whole requests, each
        answered when its chunk is done (see :class:`~skebrm.serving.MicroBatcher`). None:
        :func:`create_app` uses the bundle's RM ``batch_size`` (one RM batch per call).
    """

    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_texts_per_request: int = 256
    max_chars_per_text: int = 100_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_pending_texts: int = 4096
    strip_suffixes: tuple = ()
    strip_tokens: tuple | None = None
    score_chunk_size: int | None = None

    def __post_init__(self):
        check_chunk_size(self.score_chunk_size, "ServerSettings", "score_chunk_size")
        for name in (
            "max_batch_size",
            "max_texts_per_request",
            "max_chars_per_text",
            "max_request_bytes",
            "max_pending_texts",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServerSettings: {name} must be a positive int, got {value!r}.")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms < 1e4:
            raise ValueError(
                f"ServerSettings: max_wait_ms must be a number in [0, 10000), got "
                f"{self.max_wait_ms!r}."
            )
        for name in ("strip_suffixes", "strip_tokens"):
            value = getattr(self, name)
            if value is None and name == "strip_tokens":
                continue
            if not isinstance(value, (tuple, list)) or not all(
                isinstance(s, str) and s for s in value
            ):
                raise ValueError(
                    f"ServerSettings: {name} must be non-empty strings (a tuple), got {value!r}."
                )
            object.__setattr__(self, name, tuple(value))
        if self.max_texts_per_request > self.max_pending_texts:
            raise ValueError(
                f"ServerSettings: max_texts_per_request={self.max_texts_per_request} is above "
                f"max_pending_texts={self.max_pending_texts}: a request of that many texts "
                "could never be queued and would get 503 'retry later' forever; lower "
                "max_texts_per_request or raise max_pending_texts."
            )


class RequestError(ValueError):
    """A request the server refuses; ``status`` is its HTTP status code.

    Parameters
    ----------
    status : int
        The HTTP status code of the answer.
    detail : str
        The message sent back as the answer's ``detail``.
    """

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _strip(text: str, suffixes: tuple) -> str:
    changed = True
    while changed and suffixes:
        changed = False
        for s in suffixes:
            if text.endswith(s):
                text = text[: -len(s)]
                changed = True
    return text


def _prompt_overlap(prompt: str, query: str) -> int:
    """The length of the longest end of ``prompt`` that ``query`` starts with
    (Knuth–Morris–Pratt: the query's start is the pattern, the prompt the text)."""
    pattern = query[: len(prompt)]
    if not pattern:
        return 0
    fail, k = [0] * len(pattern), 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    k = 0
    for ch in prompt:
        while k and (k == len(pattern) or ch != pattern[k]):
            k = fail[k - 1]
        if k < len(pattern) and ch == pattern[k]:
            k += 1
    return k


def _response_start(prompt: str, query: str) -> int | None:
    """Where the response starts in ``query``: after the whole ``prompt``, or after the
    end of it that the query starts with, when the policy's trainer cut the prompt from
    the left (at least :data:`MIN_PROMPT_OVERLAP` characters; a replacement character
    left by a cut through a multi-byte character is skipped). None: neither."""
    if query.startswith(prompt):
        return len(prompt)
    lead = len(query) - len(query.lstrip("\ufffd"))
    overlap = _prompt_overlap(prompt, query[lead:])
    return lead + overlap if overlap >= MIN_PROMPT_OVERLAP else None


def _strip_ends(text: str, tokens: tuple) -> str:
    """``text`` without ``tokens`` (longest first), repeated, at both ends; whitespace
    between two stripped tokens goes with them, other whitespace stays."""
    if not tokens:
        return text
    start, end = 0, len(text)

    def token_at_start(i):
        return next((t for t in tokens if text.startswith(t, i, end)), None)

    def token_at_end(j):
        return next((t for t in tokens if text.endswith(t, start, j)), None)

    while (t := token_at_start(start)) is not None:
        start += len(t)
        j = start
        while j < end and text[j].isspace():
            j += 1
        if j > start and token_at_start(j) is not None:
            start = j
    while start < end and (t := token_at_end(end)) is not None:
        end -= len(t)
        j = end
        while j > start and text[j - 1].isspace():
            j -= 1
        if j < end and token_at_end(j) is not None:
            end = j
    return text[start:end]


def special_tokens(tokenizer) -> tuple[tuple[str, str], ...]:
    """``(token, attribute)`` of a tokenizer's pad, eos and BOS tokens that it has.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        The tokenizer to read the tokens from.

    Returns
    -------
    tuple of (str, str)
        ``(token, attribute)`` per token, pad, eos, BOS in that order, without duplicates.
    """
    out = []
    for attribute in ("pad_token", "eos_token", "bos_token"):
        token = getattr(tokenizer, attribute, None)
        if isinstance(token, str) and token and token not in (t for t, _ in out):
            out.append((token, attribute))
    return tuple(out)


def strip_token_sources(
    rm_tokenizer, policy_tokenizer=None, extra=(), *, include_rm: bool = True
) -> list[tuple[str, str]]:
    """The tokens the server strips and where each comes from, without duplicates.

    Parameters
    ----------
    rm_tokenizer : PreTrainedTokenizerBase
        The RM's tokenizer; its pad / eos / BOS tokens come first (unless
        ``include_rm=False``).
    policy_tokenizer : PreTrainedTokenizerBase, optional
        The policy's tokenizer (the one OpenRLHF decodes queries with); its pad / eos /
        BOS tokens are added.
    extra : sequence of str
        Further tokens (``skebrm-serve --strip-token``).
    include_rm : bool, default=True
        Include the RM tokenizer's tokens.

    Returns
    -------
    list of (token, source)
        Each token with where it comes from (e.g. ``"RM eos_token"``,
        ``"--strip-token"``), first source first.
    """
    out: list[tuple[str, str]] = []
    sources = []
    if include_rm:
        sources += [(t, f"RM {a}") for t, a in special_tokens(rm_tokenizer)]
    if policy_tokenizer is not None:
        sources += [(t, f"policy {a}") for t, a in special_tokens(policy_tokenizer)]
    sources += [(t, "--strip-token") for t in extra]
    for token, source in sources:
        if token and token not in (t for t, _ in out):
            out.append((token, source))
    return out


def _check_list(payload: dict, key: str, n: int | None, settings: ServerSettings) -> list:
    value = payload[key]
    if not isinstance(value, list):
        raise RequestError(
            422, f"'{key}' must be a list, got {type(value).__name__} ({_json_type(value)})."
        )
    if n is not None and len(value) != n:
        raise RequestError(
            422, f"'{key}' has {len(value)} entries but 'query' has {n}; send one per query."
        )
    return value


def _json_type(value) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def parse_reward_request(payload, settings: ServerSettings) -> tuple[list[str], list[str]]:
    """``(prompts, responses)`` of a ``/get_reward`` payload, or :class:`RequestError`.

    Parameters
    ----------
    payload : object
        The request's JSON value: an object with ``query`` and optionally ``prompts``.
    settings : ServerSettings
        The limits checked and the tokens and suffixes stripped.

    Returns
    -------
    prompts : list of str
        The prompt of each query (empty strings without ``prompts``).
    responses : list of str
        The rest of each query after its prompt, stripped.
    """
    if not isinstance(payload, dict):
        raise RequestError(
            422,
            'the request body must be a JSON object like {"query": [...]}, got a JSON '
            f"{_json_type(payload)}.",
        )
    if "query" not in payload:
        raise RequestError(
            422, "'query' is required: a list of texts (prompt + response), one per sample."
        )
    tokens = tuple(sorted(settings.strip_tokens or (), key=len, reverse=True))
    query = _check_list(payload, "query", None, settings)
    if not query:
        raise RequestError(422, "'query' is empty; send at least one text.")
    if len(query) > settings.max_texts_per_request:
        raise RequestError(
            413,
            f"'query' has {len(query)} texts, above this server's limit of "
            f"{settings.max_texts_per_request} per request; split the request.",
        )
    for i, q in enumerate(query):
        if not isinstance(q, str):
            raise RequestError(422, f"'query'[{i}] must be a string, got a JSON {_json_type(q)}.")
        if len(q) > settings.max_chars_per_text:
            raise RequestError(
                413,
                f"'query'[{i}] has {len(q)} characters, above this server's limit of "
                f"{settings.max_chars_per_text} per text.",
            )
    query = [_strip_ends(q, tokens) for q in query]
    prompts = payload.get("prompts")
    if prompts is None:
        prompts = [""] * len(query)
        responses = list(query)
    else:
        prompts = list(_check_list(payload, "prompts", len(query), settings))
        responses = []
        for i, (p, q) in enumerate(zip(prompts, query)):
            if not isinstance(p, str):
                raise RequestError(
                    422, f"'prompts'[{i}] must be a string, got a JSON {_json_type(p)}."
                )
            p = prompts[i] = _strip_ends(p, tokens)
            start = _response_start(p, q)
            if start is None:
                raise RequestError(
                    422,
                    f"'query'[{i}] does not start with 'prompts'[{i}], nor with its last "
                    f"{MIN_PROMPT_OVERLAP} or more characters (a prompt cut from the left); "
                    "each query must be its prompt followed by the response.",
                )
            responses.append(_strip_ends(q[start:], tokens))
    if payload.get("labels") is not None:
        _check_list(payload, "labels", len(query), settings)
    responses = [_strip(r, settings.strip_suffixes) for r in responses]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p.strip() and not r.strip():
            raise RequestError(422, f"'query'[{i}] is empty: there is nothing to score.")
    return prompts, responses


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"the request body is {int(declared)} bytes, above this server's limit of {limit}."
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(
                413, f"the request body is over this server's limit of {limit} bytes."
            )
    return bytes(body)


def parse_json(body: bytes):
    """The JSON value of a request body, or :class:`RequestError` (400) with a fixed message.

    Parameters
    ----------
    body : bytes
        The request body.

    Returns
    -------
    object
        The parsed JSON value.
    """
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise RequestError(
            400, "the request body is not valid JSON for this server: it is nested too deeply."
        ) from None
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise RequestError(
            400,
            "the request body is not valid JSON for this server: it holds a number with too "
            "many digits.",
        ) from None


def _parse_body(body: bytes, settings: ServerSettings) -> tuple[list[str], list[str]]:
    return parse_reward_request(parse_json(body), settings)


def _floats(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]


def _rm_batch_size(bundle) -> int | None:
    batch_size = getattr(bundle, "batch_size", None)
    return batch_size if isinstance(batch_size, int) and batch_size > 0 else None


def create_app(bundle, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``bundle`` (a :class:`~skebrm.RefinedRewardModel`).

    Parameters
    ----------
    bundle : RefinedRewardModel
        The bundle whose ``score`` answers the requests.
    settings : ServerSettings, optional
        Limits and batching; default ``ServerSettings()``, with the strip tokens taken
        from the bundle's tokenizer when ``strip_tokens`` is None.

    Returns
    -------
    fastapi.FastAPI
        The app, its micro-batcher started and stopped with the app's lifespan.
    """
    settings = settings or ServerSettings()
    if settings.strip_tokens is None:
        tokens = tuple(t for t, _ in special_tokens(getattr(bundle, "tokenizer", None)))
        settings = dataclasses.replace(settings, strip_tokens=tokens)
    batcher = MicroBatcher(
        bundle.score,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_pending_texts=settings.max_pending_texts,
        chunk_size=settings.score_chunk_size or _rm_batch_size(bundle),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="skebrm reward server", lifespan=lifespan)
    app.state.bundle = bundle
    app.state.batcher = batcher
    app.state.settings = settings

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        # the client gets a fixed message; Starlette re-raises the exception after this
        # answer, so the server's log (uvicorn's) has the traceback
        return JSONResponse(
            status_code=500,
            content={"detail": "internal server error; the server's log has the details."},
        )

    @app.get("/health")
    async def health():
        choice = getattr(bundle, "step_choice_", None)
        return {
            "status": "ok",
            "model": bundle.extraction_settings["model"],
            "reward": bundle.__name__,
            "penalty": bundle.penalty,
            "step": getattr(bundle, "step", "refined"),
            "step_reason": None if choice is None else choice.reason,
            "max_length": bundle.extraction_settings["max_length"],
            "batches": batcher.batches,
            "texts": batcher.texts,
            "pending_texts": batcher.pending_texts,
            "limits": asdict(settings),
        }

    @app.post("/get_reward")
    async def get_reward(request: Request):
        body = await _read_body(request, settings.max_request_bytes)
        if len(body) > THREADED_PARSE_BYTES:  # keep the event loop free for other clients
            prompts, responses = await run_in_threadpool(_parse_body, body, settings)
        else:
            prompts, responses = _parse_body(body, settings)
        try:
            scores = await batcher.submit(prompts, responses)
        except ServerBusyError as exc:
            return JSONResponse(
                status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"}
            )
        except (TypeError, ValueError) as exc:  # a text the reward model cannot take
            raise RequestError(
                422, f"the reward model could not score this request: {exc}"
            ) from exc
        return {
            "rewards": _floats(scores.served(bundle.penalty)),
            "scores": _floats(scores.refined_reward),
            "extra_logs": {
                "reward_std": _floats(scores.std),
                "base_reward": _floats(scores.base_reward),
            },
        }

    return app
