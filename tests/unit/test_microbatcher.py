"""MicroBatcher: concurrent callers share one call of the batch function, each gets its own row back."""

from __future__ import annotations

import asyncio

import pytest

from messplus.service.server.batcher import MicroBatcher

LONG = 30.0  # a max delay no test may wait out: a batch that waits for it makes the test time out instead


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.calls.append(list(items))
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


async def later(b: MicroBatcher[int, int], x: int, after: float) -> int:
    """A caller that comes `after` seconds from now."""
    await asyncio.sleep(after)
    return await b.submit(x)


def test_concurrent_callers_share_batches_up_to_max_batch_and_get_their_own_rows() -> None:
    fn = Recorder()

    async def main() -> list[int]:
        b = MicroBatcher(fn, max_batch=4, max_delay_s=0.1)  # the last two wait for a cohort that never comes
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(10)))
        finally:
            await b.close()
    assert run(main()) == [i * 10 for i in range(10)]
    assert fn.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_lone_caller_never_waits_for_the_delay() -> None:
    fn = Recorder()

    async def main() -> list[int]:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=LONG)
        try:
            return [await b.submit(i) for i in range(3)]
        finally:
            await b.close()
    assert run(main()) == [0, 10, 20]
    assert fn.calls == [[0], [1], [2]]


def test_a_batch_waits_for_the_cohort_of_the_previous_batch() -> None:
    fn = Recorder()

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=LONG)
        try:
            await asyncio.gather(b.submit(1), b.submit(2), b.submit(3))  # one batch of 3

            await asyncio.gather(later(b, 4, 0.0), later(b, 5, 0.05), later(b, 6, 0.1))
        finally:
            await b.close()
    run(main())
    assert fn.calls == [[1, 2, 3], [4, 5, 6]]


def test_the_delay_closes_a_batch_whose_cohort_does_not_come_back() -> None:
    fn = Recorder()

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=0.05)
        try:
            await asyncio.gather(*(b.submit(i) for i in range(4)))
            assert await b.submit(9) == 90  # alone: runs when the delay has passed
        finally:
            await b.close()
    run(main())
    assert fn.calls == [[0, 1, 2, 3], [9]]


def test_errors_reach_only_their_callers_and_a_failing_batch_fails_all_of_its_callers() -> None:
    fn = Recorder()

    async def main() -> list[object]:
        b = MicroBatcher(fn, max_batch=8, max_delay_s=LONG)
        try:
            return await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
        finally:
            await b.close()
    out = run(main())
    assert out[0] == 10 and out[2] == 20 and isinstance(out[1], ValueError)

    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("predictor down")

    async def main2() -> list[object]:
        b = MicroBatcher(broken, max_batch=8, max_delay_s=LONG)
        try:
            return await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        finally:
            await b.close()
    assert all(isinstance(e, RuntimeError) for e in run(main2()))


def test_a_cancelled_caller_is_dropped_from_its_batch() -> None:
    fn = Recorder()

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=LONG)
        try:
            await asyncio.gather(b.submit(1), b.submit(2))  # cohort 2: the next batch waits for a second item
            first = asyncio.ensure_future(b.submit(3))
            await asyncio.sleep(0.01)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert await b.submit(4) == 40
        finally:
            await b.close()
    run(main())
    assert fn.calls == [[1, 2], [4]]
    assert "2 batches, 3 items" in MicroBatcher.summary(_stats(fn))


def _stats(fn: Recorder) -> MicroBatcher[int, int]:
    b: MicroBatcher[int, int] = MicroBatcher(fn, max_batch=1, max_delay_s=0.0)
    b.batches, b.items = len(fn.calls), sum(len(c) for c in fn.calls)
    b.sizes.update(len(c) for c in fn.calls)
    return b


class Slow(Recorder):
    """A batch function whose first call takes `first_s` (the last batch's time the gather fraction scales)."""

    def __init__(self, first_s: float) -> None:
        super().__init__()
        self.first_s = first_s

    def __call__(self, items: list[int]) -> list[int | Exception]:
        if not self.calls:
            import time
            time.sleep(self.first_s)
        return super().__call__(items)


def _trickle(gather: float) -> list[list[int]]:
    """After a batch of 1 s, its cohort of 3 comes back spread over 0.3 s, 0.15 s apart; the delay is 0.25 s:
    longer than each gap, shorter than the spread."""
    fn = Slow(1.0)

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=0.25, gather=gather)
        try:
            await asyncio.gather(b.submit(1), b.submit(2), b.submit(3))

            await asyncio.gather(later(b, 4, 0.0), later(b, 5, 0.15), later(b, 6, 0.3))
        finally:
            await b.close()
    run(main())
    return fn.calls


def test_a_cohort_that_keeps_coming_back_is_gathered_into_one_batch() -> None:
    # gather 0.5 of the last batch's 1 s: the predictor may idle 0.5 s while callers keep coming
    assert _trickle(0.5) == [[1, 2, 3], [4, 5, 6]]
    # without it (the rule before): the batch closes 0.25 s after the first, and the last caller waits for the
    # whole batch of the other two before its own
    assert _trickle(0.0) == [[1, 2, 3], [4, 5], [6]]


def test_gathering_stops_at_its_fraction_of_the_last_batch() -> None:
    fn = Slow(0.75)

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=64, max_delay_s=0.25, gather=0.5)  # may idle max(0.25, 0.375) s
        try:
            await asyncio.gather(*(b.submit(i) for i in range(10)))  # a cohort of 10

            # they keep coming every 0.15 s (within the delay) but too slowly: the batch closes at 0.375 s
            await asyncio.gather(*(later(b, 10 + i, 0.15 * i) for i in range(5)))
        finally:
            await b.close()
    run(main())
    assert fn.calls[0] == list(range(10))
    assert fn.calls[1] == [10, 11, 12], fn.calls


def test_callers_cancelled_while_queued_take_no_slot_of_the_next_batch() -> None:
    """Three of six callers queued behind a running batch give up: the three left make one batch of max_batch 4
    (the cancelled ones took slots, and one live caller waited for a batch more)."""
    import threading

    calls: list[list[int]] = []
    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if items == [-1]:
            release.wait(5)
        return items

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=4, max_delay_s=0.02)
        try:
            first = asyncio.ensure_future(b.submit(-1))
            await asyncio.sleep(0.05)  # the first batch runs
            queued = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
            await asyncio.sleep(0.01)
            for t in queued[:3]:
                t.cancel()
            await asyncio.sleep(0.01)
            release.set()
            assert await first == -1 and await asyncio.gather(*queued[3:]) == [3, 4, 5]
        finally:
            await b.close()

    run(main())
    assert calls == [[-1], [3, 4, 5]]


def test_a_lone_caller_that_leaves_while_its_batch_gathers_does_not_end_the_batcher() -> None:
    """After a batch of four the next waits for four callers; the one that came leaves (its deadline) before
    they do. The gathering loop then read the last caller of an empty queue: IndexError, the batcher's task
    dead with a traceback in the log ("Task exception was never retrieved")."""
    fn = Recorder()

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=4, max_delay_s=0.05)
        try:
            assert await asyncio.gather(*(b.submit(i) for i in range(4))) == [0, 10, 20, 30]
            lone = asyncio.ensure_future(b.submit(4))
            await asyncio.sleep(0.01)
            lone.cancel()
            await asyncio.sleep(0.15)  # past the delay: the gathering gives up on the cohort
            task = b._task
            assert task is not None and not task.done(), task.exception() if task and task.done() else ""
            assert await b.submit(5) == 50
        finally:
            await b.close()

    run(main())
    assert fn.calls == [[0, 1, 2, 3], [5]]


def test_close_answers_every_waiting_caller_and_keeps_the_loop_running() -> None:
    """close() while a batch runs and more callers wait: each gets an error (they hung), and the event loop is
    not blocked while the predictor's thread finishes its batch."""
    import threading
    import time

    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> None:
        b = MicroBatcher(fn, max_batch=2, max_delay_s=0.001)
        running = [asyncio.ensure_future(b.submit(i)) for i in range(2)]
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit(i)) for i in range(2, 4)]
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(b.close())
        began = time.monotonic()
        await asyncio.sleep(0.05)  # the loop runs while close() waits for the predictor's thread
        assert time.monotonic() - began < 1.0 and not closing.done()
        release.set()
        await closing
        for t in running + waiting:
            with pytest.raises(RuntimeError, match="micro-batcher"):
                await t
        with pytest.raises(RuntimeError, match="closed"):
            await b.submit(9)

    run(main())


def test_a_result_short_of_its_batch_fails_every_caller_instead_of_hanging_some() -> None:
    async def main() -> None:
        b = MicroBatcher(lambda items: items[:1], max_batch=3, max_delay_s=0.05)
        try:
            got = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        finally:
            await b.close()
        assert all(isinstance(g, ValueError) for g in got[1:]), got

    run(main())
