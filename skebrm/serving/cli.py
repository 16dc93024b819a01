"""``skebrm-serve``: serve a saved :class:`~skebrm.RefinedRewardModel` over HTTP.

::

    skebrm-serve --model ebrm-bundle [--host 127.0.0.1] [--port 5000]

then point OpenRLHF at it with ``--remote_rm_url http://127.0.0.1:5000/get_reward``.
SIGINT / SIGTERM shut it down cleanly: it stops accepting connections, answers the
requests in flight (for up to ``--graceful-timeout`` seconds), stops the micro-batcher,
then exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys

__all__ = ["build_parser", "main"]


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
    p.add_argument("--max-texts-per-request", type=int, default=d.max_texts_per_request)
    p.add_argument("--max-chars-per-text", type=int, default=d.max_chars_per_text)
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    p.add_argument("--max-pending-texts", type=int, default=d.max_pending_texts)
    p.add_argument(
        "--strip-suffix",
        action="append",
        default=[],
        metavar="TEXT",
        help="remove TEXT from the end of every response before scoring (repeatable), e.g. "
        "the policy's end-of-turn token",
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``skebrm-serve``."""
    args = build_parser().parse_args(argv)
    import torch
    import uvicorn

    from skebrm.bundle import RefinedRewardModel
    from skebrm.serving.app import ServerSettings, create_app

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
            strip_suffixes=tuple(args.strip_suffix),
        )
        bundle = RefinedRewardModel.from_pretrained(
            args.model, device=args.device, penalty=args.penalty, batch_size=args.batch_size
        )
    except (OSError, ValueError, TypeError) as exc:
        print(f"skebrm-serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"skebrm-serve: {bundle!r} from {args.model}", file=sys.stderr, flush=True)
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
