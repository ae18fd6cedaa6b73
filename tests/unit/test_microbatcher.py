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

            async def later(x: int, after: float) -> int:
                await asyncio.sleep(after)
                return await b.submit(x)
            await asyncio.gather(later(4, 0.0), later(5, 0.05), later(6, 0.1))
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
