"""The reward server: OpenRLHF's remote reward-model contract on FastAPI.

``POST /get_reward`` takes ``{"query": [texts], "prompts": [...], "labels": [...]}``
(``prompts`` and ``labels`` optional), as OpenRLHF's remote reward client sends it, and
answers::

    {"rewards": [refined − λ·std, ...],
     "scores": [refined, ...],
     "extra_logs": {"reward_std": [...], "base_reward": [...]}}

one entry per text, in order. Each ``query`` is prompt + response: with ``prompts`` the
response is what follows the prompt (a query that does not start with its prompt is
refused); without them the whole query is scored as a response to an empty prompt.
``labels`` are accepted and ignored. ``GET /health`` reports the model and the limits.

Bad input gets a 4xx JSON answer ``{"detail": "..."}`` that names the problem: 400 for a
body that is not JSON, 422 for wrong types, empty or misaligned lists, 413 for a request
over the limits (bytes, texts per request, characters per text); 503 when too many texts
are already waiting. Requests are validated before they join a batch, so a bad request
never touches the others. Nothing on this path unpickles: requests are JSON, and the
bundle loads from safetensors and JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from skebrm.serving.batcher import MicroBatcher, ServerBusyError

__all__ = ["RequestError", "ServerSettings", "create_app", "parse_reward_request"]


@dataclass(frozen=True)
class ServerSettings:
    """Limits and batching of the reward server.

    Attributes
    ----------
    max_batch_size : int
        Texts scored together (concurrent requests are micro-batched up to this).
    max_wait_ms : float
        How long a request waits for others to join its batch.
    max_texts_per_request : int
    max_chars_per_text : int
        Characters of one ``query`` entry.
    max_request_bytes : int
        Size of a request body.
    max_pending_texts : int
        Texts allowed to wait for scoring; beyond it requests get 503.
    strip_suffixes : tuple of str
        Strings removed (repeatedly) from the end of every response before scoring, e.g.
        the policy's end-of-turn token that OpenRLHF's decoded queries end with.
    """

    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    max_texts_per_request: int = 256
    max_chars_per_text: int = 100_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_pending_texts: int = 4096
    strip_suffixes: tuple = ()

    def __post_init__(self):
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
        if not all(isinstance(s, str) and s for s in self.strip_suffixes):
            raise ValueError(
                "ServerSettings: strip_suffixes must be non-empty strings, got "
                f"{self.strip_suffixes!r}."
            )


class RequestError(ValueError):
    """A request the server refuses; ``status`` is its HTTP status code."""

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
    """``(prompts, responses)`` of a ``/get_reward`` payload, or :class:`RequestError`."""
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
    prompts = payload.get("prompts")
    if prompts is None:
        prompts = [""] * len(query)
        responses = list(query)
    else:
        prompts = _check_list(payload, "prompts", len(query), settings)
        responses = []
        for i, (p, q) in enumerate(zip(prompts, query)):
            if not isinstance(p, str):
                raise RequestError(
                    422, f"'prompts'[{i}] must be a string, got a JSON {_json_type(p)}."
                )
            if not q.startswith(p):
                raise RequestError(
                    422,
                    f"'query'[{i}] does not start with 'prompts'[{i}]; each query must be its "
                    "prompt followed by the response.",
                )
            responses.append(q[len(p) :])
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


def _floats(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]


def create_app(bundle, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``bundle`` (a :class:`~skebrm.RefinedRewardModel`).

    Parameters
    ----------
    bundle : RefinedRewardModel
    settings : ServerSettings, optional
    """
    settings = settings or ServerSettings()
    batcher = MicroBatcher(
        bundle.score,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_pending_texts=settings.max_pending_texts,
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
        return JSONResponse(
            status_code=500, content={"detail": f"internal error: {type(exc).__name__}: {exc}"}
        )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": bundle.extraction_settings["model"],
            "reward": bundle.__name__,
            "penalty": bundle.penalty,
            "max_length": bundle.extraction_settings["max_length"],
            "batches": batcher.batches,
            "texts": batcher.texts,
            "pending_texts": batcher.pending_texts,
            "limits": asdict(settings),
        }

    @app.post("/get_reward")
    async def get_reward(request: Request):
        body = await _read_body(request, settings.max_request_bytes)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}.") from None
        prompts, responses = parse_reward_request(payload, settings)
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
            "rewards": _floats(scores.penalized(bundle.penalty)),
            "scores": _floats(scores.refined_reward),
            "extra_logs": {
                "reward_std": _floats(scores.std),
                "base_reward": _floats(scores.base_reward),
            },
        }

    return app
