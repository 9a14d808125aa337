"""Dynamic batching for one model: requests of N >= 1 rows queue up while the model runs; when it is
free, the queued rows (at most `max_batch` of them) run as one batch and each request gets exactly
its own rows back.

A request that arrives while the model is idle runs at once. One that arrived while it was busy
may wait until the batch is full or until it has waited `max_delay_s` since its arrival. Requests
larger than `max_batch` rows are split into parts. Requests whose deadline passed, or which were
cancelled (the client went away), are dropped before they run. The model runs on one executor
thread, off the event loop (the native program releases the GIL)."""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


class QueueFull(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


class ModelFailed(Exception):
    pass


@dataclass
class _Part:
    rows: Tensor
    arrival: float
    deadline: float
    arrived_busy: bool
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    started: bool = False


@dataclass
class BatchStats:
    """What one executed batch looked like (for the metrics)."""

    rows: int
    parts: int
    queue_s: list[float]
    compute_s: float
    failed: bool


class Batcher:
    def __init__(self, run: Callable[[Tensor], Tensor], max_batch: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.on_batch, self.on_drop = on_batch or (lambda s: None), on_drop or (lambda reason: None)
        self.pending: collections.deque[_Part] = collections.deque()
        self.busy = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="basisrt-model")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def depth(self) -> int:
        """Parts waiting to run."""
        return len(self.pending)

    @property
    def full(self) -> bool:
        """No request could be queued now (`submit` would raise QueueFull)."""
        return len(self.pending) >= self.max_queue

    def submit(self, x: Tensor, deadline: float) -> asyncio.Future:
        """Queue x's rows now (QueueFull if they do not fit): a future of x's output rows, batched
        with other requests. It fails with DeadlineExceeded when no part started by `deadline`
        (time.monotonic()), or ModelFailed; cancelling it drops the parts not yet started."""
        parts_rows = [x] if x.shape[0] <= self.max_batch else list(x.split(self.max_batch))
        if len(self.pending) + len(parts_rows) > self.max_queue:
            raise QueueFull(f"{len(self.pending)} requests queued (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        parts = [_Part(r, now, deadline, self.busy) for r in parts_rows]
        self.pending.extend(parts)
        self._idle.clear()
        self._wake.set()
        result = parts[0].future if len(parts) == 1 else _joined(loop, parts)

        def expire() -> None:
            if not result.done() and not any(p.started for p in parts):
                result.set_exception(DeadlineExceeded("the request did not start before its deadline"))
                self.on_drop("deadline")
        timer = loop.call_later(max(deadline - now, 0.0), expire)

        def settled(_: asyncio.Future) -> None:  # done, failed or cancelled: the other parts need not run
            timer.cancel()
            self._drop(parts)
        result.add_done_callback(settled)
        return result

    @staticmethod
    def _drop(parts: list[_Part]) -> None:
        for p in parts:
            if not p.future.done():
                p.future.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (True), or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=True)

    def _take(self) -> list[_Part]:
        batch, rows, now = [], 0, time.monotonic()
        while self.pending:
            p = self.pending[0]
            if p.future.done():  # cancelled: the client went away or gave up
                self.pending.popleft()
                continue
            if now > p.deadline:
                self.pending.popleft()
                p.future.set_exception(DeadlineExceeded("the request did not start before its deadline"))
                self.on_drop("deadline")
                continue
            if rows + p.rows.shape[0] > self.max_batch:
                break
            self.pending.popleft()
            batch.append(p)
            rows += p.rows.shape[0]
        return batch

    def _queued_rows(self) -> int:
        return sum(p.rows.shape[0] for p in self.pending if not p.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self.pending[0]
            if first.arrived_busy:  # it came while a batch ran: wait a little for a fuller batch
                while self._queued_rows() < self.max_batch:
                    left = first.arrival + self.max_delay_s - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            start = time.monotonic()
            for p in batch:
                p.started = True
            x = batch[0].rows if len(batch) == 1 else torch.cat([p.rows for p in batch])
            self.busy = True
            failed = False
            try:
                y = await loop.run_in_executor(self._executor, self.run, x)
                if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
                    raise RuntimeError(f"the model returned {type(y).__name__} "
                                       f"{tuple(getattr(y, 'shape', ()))} for {x.shape[0]} rows")
            except Exception as e:  # noqa: BLE001 - only this batch fails; the server goes on
                failed = True
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(ModelFailed(f"{type(e).__name__}: {e}"))
            else:
                for p, out in zip(batch, y.split([p.rows.shape[0] for p in batch])):
                    if not p.future.done():
                        p.future.set_result(out)
            finally:
                self.busy = False
            self.on_batch(BatchStats(x.shape[0], len(batch), [start - p.arrival for p in batch],
                                     time.monotonic() - start, failed))


def _joined(loop: asyncio.AbstractEventLoop, parts: list[_Part]) -> asyncio.Future:
    """One future of the parts' outputs concatenated: it fails (or is cancelled) with the first
    part that does."""
    joined = loop.create_future()

    def part_done(f: asyncio.Future) -> None:
        error = None if f.cancelled() else f.exception()  # retrieved: asyncio logs nothing for it
        if joined.done():
            return
        if f.cancelled():
            joined.cancel()
        elif error is not None:
            joined.set_exception(error)
        elif all(p.future.done() for p in parts):
            joined.set_result(torch.cat([p.future.result() for p in parts]))
    for p in parts:
        p.future.add_done_callback(part_done)
    return joined
