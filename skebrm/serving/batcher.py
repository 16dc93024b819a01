"""Micro-batching: concurrent requests are scored together, up to a batch size.

Requests wait in a queue; one worker takes the first, then gathers the requests that are
already waiting or arrive until ``max_batch_size`` texts are collected or the first of
them has waited ``max_wait_s`` (counted from its arrival, so a request that queued while
the scorer was busy goes to it as soon as it is free). The batch is scored on a single
scoring thread (so the event loop keeps answering while the model runs, and the model
never runs twice at once), in chunks of at most ``chunk_size`` texts: whole requests,
ordered by length (less padding per chunk), one scoring call per chunk. Each request gets
its own slice (of every per-text array; other fields, such as a flag of the whole chunk,
are handed to every request as they are) as soon as its chunk is scored, so its client
can send its next request while the other chunks are scored. When a batch's last chunk
is done, the requests already waiting go to the scorer before that chunk's answers are
sent, so the scorer does not wait for the event loop. A request larger than
``max_batch_size`` (or ``chunk_size``) is scored alone. If a chunk of several requests
fails, each of its requests is retried alone, so an error reaches only the request that
caused it; an error after scoring fails that chunk's requests, and the worker goes on.
:meth:`MicroBatcher.stop` answers every queued request before it returns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MicroBatcher", "ServerBusyError"]


def check_chunk_size(value, owner: str, name: str) -> None:
    """A positive int or None, else a ``ValueError`` naming ``owner`` and ``name``."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{owner}: {name} must be a positive int or None, got {value!r}.")


class ServerBusyError(RuntimeError):
    """More texts are waiting than the batcher accepts (``max_pending_texts``)."""


@dataclass
class _Job:
    prompts: list
    completions: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    finished: bool = False


class MicroBatcher:
    """Score ``(prompts, completions)`` requests in shared batches.

    Parameters
    ----------
    score : callable
        ``score(prompts, completions) -> RewardScores`` (arrays of one row per text), run
        on a dedicated thread.
    max_batch_size : int, default=64
        Texts gathered into one micro-batch.
    max_wait_s : float, default=0.005
        How long the first request of a batch waits (from its arrival) for others to join.
    max_pending_texts : int, default=4096
        Texts allowed to wait; beyond it :meth:`submit` raises :class:`ServerBusyError`.
    chunk_size : int, optional
        Texts per scoring call: a micro-batch is scored in chunks of whole requests of at
        most this many texts (a larger request alone), and each request is answered when
        its chunk is done. None (the default): the whole micro-batch in one call.
    """

    def __init__(
        self,
        score: Callable,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
        max_pending_texts: int = 4096,
        chunk_size: int | None = None,
    ):
        check_chunk_size(chunk_size, "MicroBatcher", "chunk_size")
        self.score = score
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.max_pending_texts = int(max_pending_texts)
        self.chunk_size = chunk_size
        self._queue: asyncio.Queue | None = None
        self._held: collections.deque = collections.deque()
        self._stopping = False
        self._worker: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.pending_texts = 0
        self.batches = 0
        self.texts = 0

    async def start(self) -> None:
        """Start the worker (call inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._held = collections.deque()
        self._stopping = False
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
        """Score one request; returns its ``RewardScores``.

        Parameters
        ----------
        prompts : list of str
            The request's prompts.
        completions : list of str
            Its completions, one per prompt.

        Returns
        -------
        RewardScores
            The scores of the request's texts.
        """
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

    # ------------------------------------------------------------ the worker (event loop)
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        running = None  # (the scoring call's future, its batch)
        while True:
            if running is None:
                batch = await self._gather()
                if not batch:
                    return  # stopping, and nothing is left
                running = self._submit_batch(loop, batch)
            future, batch = running
            try:
                last = await future
            except Exception as exc:  # never let the worker die: later requests would hang
                last = [(job, None, exc) for job in batch]
            # the requests already due go to the scorer before the last answers are sent
            nxt = self._due_batch()
            running = self._submit_batch(loop, nxt) if nxt else None
            self._deliver(last)

    def _next_nowait(self) -> _Job | None:
        """The oldest waiting job, or None; notes the stop marker."""
        if self._held:
            return self._held.popleft()
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                return job
            self._stopping = True
        return None

    def _take_waiting(self, batch: list, size: int) -> int:
        """Add waiting jobs to ``batch`` up to ``max_batch_size`` texts; the new size."""
        while size < self.max_batch_size:
            job = self._next_nowait()
            if job is None:
                break
            if batch and size + len(job.prompts) > self.max_batch_size:
                self._held.appendleft(job)  # the next batch starts with it
                break
            batch.append(job)
            size += len(job.prompts)
        return size

    def _due_batch(self) -> list[_Job]:
        """The waiting jobs as a batch if it is full or its first job has waited
        ``max_wait_s``; otherwise ``[]`` (they keep waiting, in order)."""
        batch: list[_Job] = []
        size = self._take_waiting(batch, 0)
        if not batch:
            return batch
        if (
            size >= self.max_batch_size
            or time.perf_counter() >= batch[0].enqueued + self.max_wait_s
        ):
            return batch
        self._held.extendleft(reversed(batch))
        return []

    async def _gather(self) -> list[_Job]:
        """Wait for a job, then for others until the batch is full or the first job has
        waited ``max_wait_s``; ``[]`` when stopping and nothing is left."""
        batch: list[_Job] = []
        size = self._take_waiting(batch, 0)
        while not batch:
            if self._stopping:
                return batch
            job = await self._queue.get()
            if job is None:
                self._stopping = True
            else:
                self._held.append(job)
            size = self._take_waiting(batch, 0)
        deadline = batch[0].enqueued + self.max_wait_s
        while size < self.max_batch_size and not self._stopping:
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                break
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout)
            except asyncio.TimeoutError:
                break
            if job is None:
                self._stopping = True
            else:
                self._held.append(job)
            size = self._take_waiting(batch, size)
        return batch

    def _submit_batch(self, loop, batch: list[_Job]):
        chunks = self._chunks(batch)
        return loop.run_in_executor(self._executor, self._score_chunks, loop, chunks), batch

    def _chunks(self, batch: list[_Job]) -> list[list[_Job]]:
        """``batch`` in chunks of whole requests of at most ``chunk_size`` texts, of about
        equal size, the requests ordered by their longest text (characters)."""
        total = sum(len(job.prompts) for job in batch)
        if self.chunk_size is None or total <= self.chunk_size or len(batch) == 1:
            return [batch]
        jobs = sorted(
            batch,
            key=lambda j: max(
                (len(p) + len(c) for p, c in zip(j.prompts, j.completions)), default=0
            ),
        )
        target = math.ceil(total / math.ceil(total / self.chunk_size))
        chunks, chunk, size = [], [], 0
        for job in jobs:
            if chunk and size + len(job.prompts) > self.chunk_size:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(job)
            size += len(job.prompts)
            if size >= target:
                chunks.append(chunk)
                chunk, size = [], 0
        if chunk:
            chunks.append(chunk)
        return chunks

    def _deliver(self, outcomes) -> None:
        for job, result, exc in outcomes:
            self._finish(job, result=result, exc=exc)

    def _finish(self, job: _Job, *, result=None, exc: BaseException | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        self.pending_texts -= len(job.prompts)
        if job.future.done():  # the client went away
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    # ------------------------------------------------------------ the scoring thread
    def _score_chunks(self, loop, chunks: list[list[_Job]]):
        """Score the chunks in turn; each chunk's answers but the last go to the event
        loop as soon as it is done; the last chunk's are returned."""
        for chunk in chunks[:-1]:
            loop.call_soon_threadsafe(self._deliver, self._score_chunk(chunk))
        return self._score_chunk(chunks[-1])

    def _score_chunk(self, chunk: list[_Job]) -> list:
        """``[(job, result, exception)]`` of one chunk; never raises."""
        prompts = [p for job in chunk for p in job.prompts]
        completions = [c for job in chunk for c in job.completions]
        try:
            scores = self.score(prompts, completions)
        except Exception as exc:
            if len(chunk) == 1:
                return [(chunk[0], None, exc)]
            return [outcome for job in chunk for outcome in self._score_chunk([job])]
        self.batches += 1
        self.texts += len(prompts)
        try:  # split first: an error here then fails the chunk, not one job
            out, start = [], 0
            for job in chunk:
                stop = start + len(job.prompts)
                out.append((job, _take(scores, start, stop, len(prompts)), None))
                start = stop
        except Exception as exc:
            return [(job, None, exc) for job in chunk]
        return out


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
