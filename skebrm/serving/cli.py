"""``skebrm-serve``: serve a saved :class:`~skebrm.RefinedRewardModel` over HTTP.

::

    skebrm-serve --model ebrm-bundle [--host 127.0.0.1] [--port 5000]

then point OpenRLHF at it with ``--remote_rm_url http://127.0.0.1:5000/get_reward``.
Pass the policy's tokenizer folder with ``--policy-tokenizer DIR``: OpenRLHF decodes its
queries with it, special tokens included, and the server strips its pad / eos / BOS
tokens (as well as the RM's own) from both ends of queries and prompts; start-up prints
the tokens stripped.
SIGINT / SIGTERM shut it down cleanly: it stops accepting connections, answers the
requests in flight (for up to ``--graceful-timeout`` seconds), stops the micro-batcher,
then exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys

__all__ = ["build_parser", "describe_step", "describe_stripping", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``skebrm-serve``."""
    from skebrm.serving.app import ServerSettings

    d = ServerSettings()
    p = argparse.ArgumentParser(
        prog="skebrm-serve",
        description="Serve a saved RefinedRewardModel with OpenRLHF's remote reward-model "
        "contract (POST /get_reward, GET /health).",
    )
    p.add_argument("--model", required=True, help="folder written by save_pretrained")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    p.add_argument("--penalty", type=float, default=None, help="override the saved λ")
    p.add_argument(
        "--batch-size", type=int, default=None, help="rows per RM forward pass (default: saved)"
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help=f"texts scored together across requests (default {d.max_batch_size})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"wait for other requests to join a batch (default {d.max_wait_ms})",
    )
    p.add_argument(
        "--score-chunk-size",
        type=int,
        default=None,
        metavar="N",
        help="texts per scoring call: a micro-batch is scored in chunks of whole requests, "
        "each answered when its chunk is done (default: the RM batch size; the "
        "--max-batch-size value scores a micro-batch in one call)",
    )
    p.add_argument("--max-texts-per-request", type=int, default=d.max_texts_per_request)
    p.add_argument("--max-chars-per-text", type=int, default=d.max_chars_per_text)
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    p.add_argument("--max-pending-texts", type=int, default=d.max_pending_texts)
    p.add_argument(
        "--strip-suffix",
        action="append",
        default=[],
        metavar="TEXT",
        help="remove TEXT from the end of every response before scoring (repeatable)",
    )
    p.add_argument(
        "--policy-tokenizer",
        default=None,
        metavar="DIR",
        help="the policy's tokenizer folder (the one OpenRLHF decodes queries with): its pad, "
        "eos and BOS tokens are stripped from both ends of queries and prompts",
    )
    p.add_argument(
        "--strip-token",
        action="append",
        default=[],
        metavar="TEXT",
        help="also strip TEXT (repeated) from both ends of queries and prompts (repeatable), "
        "e.g. '<|im_end|>' or '<|endoftext|>'",
    )
    p.add_argument(
        "--keep-rm-special-tokens",
        action="store_true",
        help="do not strip the RM tokenizer's own pad, eos and BOS tokens (stripped by default)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info"])
    p.add_argument(
        "--graceful-timeout",
        type=int,
        default=30,
        help="seconds to finish requests in flight at shutdown (default 30)",
    )
    return p


def describe_stripping(sources, suffixes=()) -> str:
    """One line for the start-up log: the tokens stripped and where each comes from."""
    if sources:
        text = "stripping from both ends of queries and prompts: " + ", ".join(
            f"{token!r} ({source})" for token, source in sources
        )
    else:
        text = "stripping no special tokens from queries and prompts"
    if suffixes:
        text += "; from the end of responses: " + ", ".join(repr(x) for x in suffixes)
    return text + "."


def describe_step(bundle) -> str:
    """One line for the start-up log: the step the bundle serves and why."""
    choice = getattr(bundle, "step_choice_", None)
    step = getattr(bundle, "step", "refined")
    if choice is None:
        return f"serving step {step!r} (no step choice: the saved or default step)."
    return f"serving step {step!r}, chosen by the step guard: {choice.reason}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``skebrm-serve``."""
    args = build_parser().parse_args(argv)
    import dataclasses

    import torch
    import uvicorn

    from skebrm.bundle import RefinedRewardModel
    from skebrm.serving.app import ServerSettings, create_app, strip_token_sources

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        settings = ServerSettings(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_texts_per_request=args.max_texts_per_request,
            max_chars_per_text=args.max_chars_per_text,
            max_request_bytes=args.max_request_bytes,
            max_pending_texts=args.max_pending_texts,
            score_chunk_size=args.score_chunk_size,
            strip_suffixes=tuple(args.strip_suffix),
            strip_tokens=tuple(args.strip_token),
        )
        policy_tokenizer = None
        if args.policy_tokenizer is not None:
            from transformers import AutoTokenizer

            policy_tokenizer = AutoTokenizer.from_pretrained(
                args.policy_tokenizer, local_files_only=True
            )
        bundle = RefinedRewardModel.from_pretrained(
            args.model, device=args.device, penalty=args.penalty, batch_size=args.batch_size
        )
    except (OSError, ValueError, TypeError) as exc:
        print(f"skebrm-serve: error: {exc}", file=sys.stderr)
        return 2
    sources = strip_token_sources(
        bundle.tokenizer,
        policy_tokenizer,
        extra=args.strip_token,
        include_rm=not args.keep_rm_special_tokens,
    )
    settings = dataclasses.replace(settings, strip_tokens=tuple(t for t, _ in sources))
    print(f"skebrm-serve: {bundle!r} from {args.model}", file=sys.stderr, flush=True)
    print(f"skebrm-serve: {describe_step(bundle)}", file=sys.stderr, flush=True)
    print(f"skebrm-serve: {describe_stripping(sources, settings.strip_suffixes)}", file=sys.stderr)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(bundle, settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.graceful_timeout,
        )
    )
    # uvicorn handles SIGINT / SIGTERM itself (graceful shutdown) and re-raises the signal
    # once it is done; these handlers receive that re-raised signal, so a shutdown that
    # was asked for and completed exits with status 0 instead of dying by the signal.
    received = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    server.run()
    if not server.started:
        return 1  # could not bind the address (uvicorn logged why)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
