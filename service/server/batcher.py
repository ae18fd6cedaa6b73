"""`MicroBatcher` gathers concurrent calls into one predictor call: it waits at most `max_delay_s` after the
first queued item (or until `max_batch` items are queued), runs one batch on a worker thread, and hands each
caller its row. On a 2-core box one MiniLM call on 8 short prompts costs far less than 8 calls on one.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Collects items from concurrent coroutines and runs `fn(batch) -> results` once per batch on a thread.

    A batch closes as soon as one of these holds:
    - `max_batch` items are queued;
    - the items expected back are queued: those that were waiting when the previous batch finished plus the
      callers that batch just answered (closed-loop callers come back together, so concurrent callers merge
      into one batch instead of settling into two half-size batches that alternate; a lone caller, whose
      previous batch was 1, never waits);
    - no item has come for `max_delay_s` while items are queued (the cohort stopped coming back);
    - the predictor has idled, with items queued, for max(`max_delay_s`, `gather` x the last batch's run time).
    A cohort's answers go out and its next calls come in one by one: 64 gRPC round trips spread over 10-25 ms
    on a loaded 2-core box. A caller that comes back just after its cohort's batch closed waits for that whole
    batch and then its own (two batch times); so while callers keep coming, the predictor waits for them, up to
    a small fraction of a batch. With `gather` = 0 (or batches shorter than max_delay_s / gather: a GPU) the
    wait is max_delay_s from the first queued item, as before.
    One batch runs at a time (the predictor already uses every core). `sizes` counts the batches by size.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], *, max_batch: int, max_delay_s: float,
                 gather: float = 0.0, executor: ThreadPoolExecutor | None = None) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._max_delay = max_delay_s
        self._gather = gather
        self._last_run = 0.0  # seconds the last batch took in fn
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="messplus-predict")
        self._queue: list[tuple[T, asyncio.Future[R], float]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        self.sizes: Counter[int] = Counter()
        self.came_during = 0  # items that came while a batch ran (with N <= batch_max callers: missed their batch)
        self._expect = 1  # items to wait for: backlog when the last batch finished + the callers it answered
        self._free_since = 0.0  # when the last batch finished
        self._closed = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("the micro-batcher is closed (the router is stopping)")
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            # a context of its own: the first caller's (its request id in the logs) would outlive that call
            self._task = loop.create_task(self._run(), context=contextvars.Context())
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut, time.monotonic()))
        assert self._wakeup is not None
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            gone = self._prune()  # cancelled callers take no slot, but they count as having come back
            if not self._queue:
                continue
            first = max(self._queue[0][2], self._free_since)
            cap = first + max(self._max_delay, self._gather * self._last_run)
            enough = min(self._max_batch, self._expect)
            while len(self._queue) + gone < enough:
                if not self._queue:  # every caller went away while the batch gathered
                    break
                deadline = min(max(first, self._queue[-1][2]) + self._max_delay, cap)
                if (left := deadline - time.monotonic()) <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    continue  # the deadline moves when an item came in the meantime
                finally:
                    gone += self._prune()
            if not self._queue:
                continue
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            if self._queue:
                self._wakeup.set()
            began = time.monotonic()
            await self._execute(loop, [(item, fut) for item, fut, _ in batch])
            self._last_run = time.monotonic() - began
            self.came_during += len(self._queue)
            self._expect = len(self._queue) + len(batch)
            await asyncio.sleep(0)  # let the answered callers' handlers send their replies before the clock starts
            self._free_since = time.monotonic()

    def _prune(self) -> int:
        """Drop the callers that went away while queued; how many."""
        n = len(self._queue)
        self._queue = [e for e in self._queue if not e[1].done()]
        return n - len(self._queue)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]
        if not live:
            return
        self.batches += 1
        self.items += len(live)
        self.sizes[len(live)] += 1
        try:
            results = await loop.run_in_executor(self._executor, self._fn, [item for item, _ in live])
            for (_, fut), res in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error (a short result too)
            _fail(live, exc)
        finally:  # cancelled (close()): no caller of the batch is left waiting
            _fail(live, RuntimeError("the micro-batcher was closed while this request's batch ran"))

    def summary(self) -> str:
        """One line for the log: batches, items, mean and largest batch."""
        if not self.batches:
            return "micro-batching: no batches"
        return (f"micro-batching: {self.batches} batches, {self.items} items, mean batch "
                f"{self.items / self.batches:.2f}, largest {max(self.sizes)}; {self.came_during} came while a batch "
                "ran")

    async def close(self) -> None:
        """Stop batching: every caller still waiting gets an error (none is left hanging), and the predictor's
        thread is joined off the event loop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        _fail([(item, fut) for item, fut, _ in self._queue], RuntimeError("the micro-batcher is closed"))
        self._queue = []
        await asyncio.to_thread(self._executor.shutdown, True)


def _fail(items: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, fut in items:
        if not fut.done():
            fut.set_exception(exc)
