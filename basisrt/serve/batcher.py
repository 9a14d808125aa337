"""Dynamic batching for one model: requests of N >= 1 rows queue up while the model runs; when it is
free, the queued rows (at most `max_batch` of them) run as one batch and each request gets exactly
its own rows back.

A request that arrives while the model is idle runs at once. One that arrived while it was busy
may wait until the batch is full or until it has waited `max_delay_s` since its arrival. Requests
larger than `max_batch` rows are split into parts. Requests whose deadline passed, or which were
cancelled (the client went away), are dropped before they run.

The batches are formed and run on one model thread, off the event loop (the native program
releases the GIL): the next batch starts as soon as the last one ends, without waiting for the
event loop to get round to it (under load that wait left the cores idle for about 1.4 ms a batch),
and the outputs go back to the loop in one callback per batch.

Rows are numpy arrays: the event loop's share of the work (submitting, splitting the output,
encoding) then makes no torch call, each of which costs microseconds there. `run` takes and
returns them (basisrt.serve.app wraps the plan with torch.from_numpy / .numpy())."""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


class ModelFailed(Exception):
    pass


@dataclass(slots=True)
class _Part:
    rows: np.ndarray
    arrival: float
    deadline: float
    arrived_busy: bool
    future: asyncio.Future  # this part's output rows
    request: asyncio.Future  # the whole request's (the same future unless it was split)
    siblings: list[_Part] = field(default_factory=list)  # the request's parts, this one included
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
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, max_delay_s: float, max_queue: int,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.on_batch, self.on_drop = on_batch or (lambda s: None), on_drop or (lambda reason: None)
        self.pending: collections.deque[_Part] = collections.deque()
        self.busy = False
        self._closing = False
        self._cond = threading.Condition()  # guards pending, busy, _closing and each part's started
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()  # nothing queued or running (set and read on the event loop)
        self._idle.set()
        self._thread = threading.Thread(target=self._model_thread, name="basisrt-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Parts waiting to run."""
        return len(self.pending)

    @property
    def full(self) -> bool:
        """No request could be queued now (`submit` would raise QueueFull)."""
        return len(self.pending) >= self.max_queue

    def submit(self, x: np.ndarray, deadline: float) -> asyncio.Future:
        """Queue x's rows now (QueueFull if they do not fit): a future of x's output rows, batched
        with other requests. It fails with DeadlineExceeded when no part started by `deadline`
        (time.monotonic()), or ModelFailed; cancelling it drops the parts not yet started."""
        n, step = len(x), self.max_batch
        parts_rows = [x] if n <= step else [x[i:i + step] for i in range(0, n, step)]
        if len(self.pending) + len(parts_rows) > self.max_queue:
            raise QueueFull(f"{len(self.pending)} requests queued (--max-queue {self.max_queue})")
        loop = self._loop
        now = time.monotonic()
        futures = [loop.create_future() for _ in parts_rows]
        result = futures[0] if len(futures) == 1 else _joined(loop, futures)
        with self._cond:
            parts = [_Part(r, now, deadline, self.busy, f, result) for r, f in zip(parts_rows, futures)]
            for part in parts:
                part.siblings = parts
            self.pending.extend(parts)
            self._cond.notify()
        self._idle.clear()

        def expire() -> None:
            with self._cond:  # a part the model thread has started is not expired
                if result.done() or any(p.started for p in parts):
                    return
                result.set_exception(DeadlineExceeded("the request did not start before its deadline"))
            self.on_drop("deadline")
        timer = loop.call_later(max(deadline - now, 0.0), expire)

        def settled(_: asyncio.Future) -> None:  # done, failed or cancelled: the other parts need not run
            timer.cancel()
            for f in futures:
                if not f.done():
                    f.cancel()
        result.add_done_callback(settled)
        return result

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (True), or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        """Stop the model thread (after the batch it runs, if any); queued parts are cancelled."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        for p in self.pending:
            p.future.cancel()

    # --- the model thread ---

    def _model_thread(self) -> None:
        held = None  # the last batch's outcome: posted to the loop just before the next batch runs
        while True:
            with self._cond:
                batch, wait_s = (None, None) if self._closing else self._ready()
                if batch is None:
                    self.busy = False
            if batch is None:  # nothing to run now: hand back what is held, then wait
                if held:
                    self._post(self._deliver, *held)
                    held = None
                else:
                    self._post(self._check_idle)
                with self._cond:
                    while not self._closing:
                        batch, wait_s = self._ready()  # again: a request may have come meanwhile
                        if batch is not None:
                            break
                        self._cond.wait(wait_s)
                    if batch is None:
                        return
                    self.busy = True
            # a copy even of one part: a binary request's rows are a read-only view of its body
            x = np.concatenate([p.rows for p in batch], dtype=np.float32)
            # The outcome of the batch before goes back only now: the event loop, woken by it,
            # would otherwise take the GIL from this thread while it forms this batch.
            if held and not self._post(self._deliver, *held):
                return
            start = time.monotonic()
            try:
                y = self.run(x)
                if not isinstance(y, np.ndarray) or y.ndim == 0 or y.shape[0] != x.shape[0]:
                    raise RuntimeError(f"the model returned {type(y).__name__} "
                                       f"{tuple(getattr(y, 'shape', ()))} for {x.shape[0]} rows")
                outcome: np.ndarray | Exception = y
            except Exception as e:  # noqa: BLE001 - only this batch fails; the server goes on
                outcome = ModelFailed(f"{type(e).__name__}: {e}")
            held = (batch, outcome, start, time.monotonic())

    def _post(self, fn, *args) -> bool:
        """fn(*args) on the event loop; False once the loop is closed (nobody waits any more)."""
        try:
            self._loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:
            return False

    def _ready(self) -> tuple[list[_Part] | None, float | None]:
        """Under the lock: (a batch that may run now, None), or (None, how long to wait for one:
        seconds, or None until a request comes)."""
        while self.pending:
            first = self.pending[0]
            if first.arrived_busy and self._queued_rows() < self.max_batch:
                # it came while a batch ran: wait a little for a fuller batch
                left = first.arrival + self.max_delay_s - time.monotonic()
                if left > 0:
                    return None, left
            batch = self._take()
            if batch:
                return batch, None
        return None, None

    def _take(self) -> list[_Part]:
        batch, rows, now = [], 0, time.monotonic()
        while self.pending:
            p = self.pending[0]
            if p.request.done():  # cancelled (the client went away or gave up) or expired
                self.pending.popleft()
                continue
            if now > p.deadline and not any(q.started for q in p.siblings):  # its timer will answer 504
                self.pending.popleft()
                continue
            if rows + p.rows.shape[0] > self.max_batch:
                break
            self.pending.popleft()
            p.started = True
            batch.append(p)
            rows += p.rows.shape[0]
        return batch

    def _queued_rows(self) -> int:
        return sum(p.rows.shape[0] for p in self.pending if not p.request.done())

    # --- back on the event loop ---

    def _deliver(self, batch: list[_Part], outcome: np.ndarray | Exception, start: float, end: float) -> None:
        failed = isinstance(outcome, Exception)
        rows = 0  # the next part's first row in outcome; at the end, the batch's rows
        for p in batch:
            n = len(p.rows)
            if not p.future.done():
                if failed:
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome[rows:rows + n])
            rows += n
        self.on_batch(BatchStats(rows, len(batch), [start - p.arrival for p in batch], end - start, failed))
        self._check_idle()

    def _check_idle(self) -> None:
        with self._cond:
            if not self.pending and not self.busy:
                self._idle.set()


def _joined(loop: asyncio.AbstractEventLoop, parts: list[asyncio.Future]) -> asyncio.Future:
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
        elif all(p.done() for p in parts):
            joined.set_result(np.concatenate([p.result() for p in parts]))
    for p in parts:
        p.add_done_callback(part_done)
    return joined
