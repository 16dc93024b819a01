"""Micro-batching: concurrent requests are scored together, up to a batch size.

Requests wait in a queue; one worker takes the first, then gathers the requests that
arrive within ``max_wait_s`` (or are already waiting) until ``max_batch_size`` texts are
collected, scores them in one call on a single scoring thread (so the event loop keeps
answering while the model runs, and the model never runs twice at once) and hands each
request its own slice (of every per-text array; other fields, such as a flag of the whole
batch, are handed to every request as they are). A request larger than
``max_batch_size`` is scored alone. If a batch of several requests fails, each of its
requests is retried alone, so an error reaches only the request that caused it; an error
after scoring fails that batch's requests, and the worker goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MicroBatcher", "ServerBusyError"]


class ServerBusyError(RuntimeError):
    """More texts are waiting than the batcher accepts (``max_pending_texts``)."""


@dataclass
class _Job:
    prompts: list
    completions: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Score ``(prompts, completions)`` requests in shared batches.

    Parameters
    ----------
    score : callable
        ``score(prompts, completions) -> RewardScores`` (arrays of one row per text), run
        on a dedicated thread.
    max_batch_size : int, default=64
        Texts per scoring call.
    max_wait_s : float, default=0.005
        How long the first request of a batch waits for others to join it.
    max_pending_texts : int, default=4096
        Texts allowed to wait; beyond it :meth:`submit` raises :class:`ServerBusyError`.
    """

    def __init__(
        self,
        score: Callable,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
        max_pending_texts: int = 4096,
    ):
        self.score = score
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.max_pending_texts = int(max_pending_texts)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.pending_texts = 0
        self.batches = 0
        self.texts = 0

    async def start(self) -> None:
        """Start the worker (call inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="skebrm-score"
        )
        self._worker = asyncio.create_task(self._run(), name="skebrm-micro-batcher")

    async def stop(self) -> None:
        """Finish the queued requests, then stop the worker and the scoring thread."""
        if self._worker is None:
            return
        await self._queue.put(None)
        await self._worker
        self._executor.shutdown(wait=True)
        self._worker = None

    async def submit(self, prompts: list, completions: list):
        """Score one request; returns its ``RewardScores``."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("MicroBatcher: not running (call start() first).")
        n = len(prompts)
        if self.pending_texts + n > self.max_pending_texts:
            raise ServerBusyError(
                f"server busy: {self.pending_texts} texts are waiting to be scored (limit "
                f"{self.max_pending_texts}); retry later."
            )
        future = asyncio.get_running_loop().create_future()
        self.pending_texts += n
        await self._queue.put(_Job(prompts, completions, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        stopping = False
        while not (stopping and carry is None and self._queue.empty()):
            job = carry if carry is not None else await self._queue.get()
            carry = None
            if job is None:
                stopping = True
                continue
            batch, size = [job], len(job.prompts)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    timeout = max(0.0, deadline - loop.time())
                    nxt = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                if nxt is None:
                    stopping = True
                    break
                if size + len(nxt.prompts) > self.max_batch_size:
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt.prompts)
            try:
                await self._score_batch(loop, batch)
            except Exception as exc:  # never let the worker die: later requests would hang
                for job in batch:
                    if not job.future.done():
                        self._finish(job, exc=exc)

    async def _score_batch(self, loop, batch: list[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        completions = [c for job in batch for c in job.completions]
        try:
            scores = await loop.run_in_executor(self._executor, self.score, prompts, completions)
        except Exception as exc:
            if len(batch) == 1:
                self._finish(batch[0], exc=exc)
            else:
                for job in batch:
                    await self._score_batch(loop, [job])
            return
        self.batches += 1
        self.texts += len(prompts)
        slices, start = [], 0
        for job in batch:  # split first: an error here then fails the batch, not one job
            stop = start + len(job.prompts)
            slices.append(_take(scores, start, stop, len(prompts)))
            start = stop
        for job, result in zip(batch, slices):
            self._finish(job, result=result)

    def _finish(self, job: _Job, *, result=None, exc: BaseException | None = None) -> None:
        self.pending_texts -= len(job.prompts)
        if job.future.done():  # the client went away
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)


def _take(scores, start: int, stop: int, n: int):
    """Rows ``start:stop`` of a dataclass of aligned arrays of ``n`` rows; fields that are
    not such arrays (a flag of the whole batch) are kept as they are."""
    if not dataclasses.is_dataclass(scores):
        raise TypeError(
            f"MicroBatcher: score must return a dataclass of per-text arrays, got "
            f"{type(scores).__name__}."
        )
    fields = {}
    for f in dataclasses.fields(scores):
        value = getattr(scores, f.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            value = value[start:stop]
        fields[f.name] = value
    return type(scores)(**fields)
