"""basisrt.serve.batcher on its own: a fake model whose batches can be held, so queueing, deadlines,
cancellation and splitting are checked without a server or timing luck."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from basisrt.serve.batcher import Batcher, DeadlineExceeded, ModelFailed, QueueFull


class FakeModel:
    """y = 2x + 1 per row; records every batch's rows; `hold` blocks batches until released."""

    def __init__(self, fail_on_rows: int | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.fail_on_rows = fail_on_rows

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.copy())
        self.started.set()
        self.hold.wait(10)
        if self.fail_on_rows is not None and x.shape[0] == self.fail_on_rows:
            raise RuntimeError("boom")
        return 2 * x + 1


def _rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + n * 3, dtype=np.float32).reshape(n, 3) + 0.5


def _run(coro):
    return asyncio.run(coro)


async def _started(model: FakeModel) -> None:
    while not model.started.is_set():
        await asyncio.sleep(0.001)


async def _running(model: FakeModel, b: Batcher, x: np.ndarray) -> asyncio.Future:
    """Submit x with the model held: returns once its batch runs (and blocks until model.hold is set)."""
    model.hold.clear()
    work = b.submit(x, time.monotonic() + 10)
    await _started(model)
    return work


def test_requests_queued_behind_a_busy_model_run_as_one_batch() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=8, max_delay_s=0.05, max_queue=16)
        first = await _running(model, b, _rows(1))  # the lone request runs at once
        later = [b.submit(_rows(n, 100 * n), time.monotonic() + 10) for n in (1, 2, 3)]
        model.hold.set()
        outs = await asyncio.gather(first, *later)
        await b.close()
        return model, outs
    model, outs = _run(main())
    assert [x.shape[0] for x in model.batches] == [1, 6]
    for out, n, start in zip(outs, (1, 1, 2, 3), (0, 100, 200, 300)):
        assert np.array_equal(out, 2 * _rows(n, start) + 1)


def test_request_larger_than_max_batch_is_split_and_reassembled() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=4, max_delay_s=0.0, max_queue=16)
        out = await b.submit(_rows(10), time.monotonic() + 10)
        await b.close()
        return model, out
    model, out = _run(main())
    assert sorted(x.shape[0] for x in model.batches) == [2, 4, 4]
    assert np.array_equal(out, 2 * _rows(10) + 1)


def test_deadline_passes_while_the_model_is_busy() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=8, max_delay_s=0.0, max_queue=16)
        busy = await _running(model, b, _rows(1))
        late = b.submit(_rows(2, 50), time.monotonic() + 0.05)
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await late
        waited = time.monotonic() - t
        model.hold.set()  # the busy batch was still running when the 504 came
        await busy
        await b.close()
        return model, waited
    model, waited = _run(main())
    assert waited < 5.0
    assert [x.shape[0] for x in model.batches] == [1]  # the expired rows never ran


def test_cancelled_request_never_runs() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=4, max_delay_s=0.0, max_queue=16)
        busy = await _running(model, b, _rows(1))
        gone = b.submit(_rows(5, 7), time.monotonic() + 10)  # two parts: 4 + 1 rows
        kept = b.submit(_rows(3, 9), time.monotonic() + 10)
        gone.cancel()
        model.hold.set()
        await busy
        out = await kept
        await b.close()
        return model, out
    model, out = _run(main())
    assert [x.shape[0] for x in model.batches] == [1, 3]
    assert np.array_equal(out, 2 * _rows(3, 9) + 1)


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    async def main():
        model = FakeModel(fail_on_rows=3)
        b = Batcher(model, max_batch=3, max_delay_s=0.0, max_queue=16)
        with pytest.raises(ModelFailed, match="boom"):
            await b.submit(_rows(5), time.monotonic() + 10)  # parts of 3 (fails) and 2
        out = await b.submit(_rows(2), time.monotonic() + 10)
        await b.close()
        return out
    assert np.array_equal(_run(main()), 2 * _rows(2) + 1)


def test_queue_full_is_raised_before_anything_is_queued() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=2, max_delay_s=0.0, max_queue=3)
        busy = await _running(model, b, _rows(1))
        queued = b.submit(_rows(4), time.monotonic() + 10)  # two parts
        assert b.depth == 2 and not b.full
        with pytest.raises(QueueFull):
            b.submit(_rows(3), time.monotonic() + 10)  # two more parts do not fit
        assert b.depth == 2
        model.hold.set()
        await asyncio.gather(busy, queued)
        await b.close()
    _run(main())


def test_a_split_request_that_started_finishes_past_its_deadline() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=2, max_delay_s=0.0, max_queue=16)
        model.hold.clear()
        request = b.submit(_rows(4), time.monotonic() + 0.05)  # two parts of 2 rows
        await _started(model)
        await asyncio.sleep(0.1)  # the deadline passes while its first part runs
        model.hold.set()
        out = await asyncio.wait_for(request, 5)
        await b.close()
        return model, out
    model, out = _run(main())
    assert [x.shape[0] for x in model.batches] == [2, 2]
    assert np.array_equal(out, 2 * _rows(4) + 1)


def test_drain_waits_for_the_running_batch_and_close_stops_the_thread() -> None:
    async def main():
        model = FakeModel()
        b = Batcher(model, max_batch=2, max_delay_s=0.0, max_queue=16)
        work = await _running(model, b, _rows(1))
        assert not await b.drain(0.05)  # still running
        model.hold.set()
        assert await b.drain(5)
        assert work.done()
        await b.close()
        return b
    b = _run(main())
    assert not b._thread.is_alive()
