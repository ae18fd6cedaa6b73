"""The satisfaction predictor: prompt text -> embedding (ONNX Runtime) -> per-model p_hat (heads).

`MicroBatcher` gathers concurrent calls into one predictor call: it waits at most `max_delay_s` after the
first queued item (or until `max_batch` items are queued), runs one batch on a worker thread, and hands each
caller its row. On a 2-core box one MiniLM call on 8 short prompts costs far less than 8 calls on one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from .heads import Heads

T = TypeVar("T")
R = TypeVar("R")


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    embedding: np.ndarray  # [dim] float32
    p_hat: np.ndarray      # [K]
    var: np.ndarray        # [K]


class Predictor:
    """Encoder plus heads; `predict` is what a Route pays for."""

    def __init__(self, encoder: TextEncoder, heads: Heads) -> None:
        self.encoder = encoder
        self.heads = heads

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = self.encoder.encode(list(texts))
        p, var = self.heads.predict(emb)
        return emb, p, var


class MicroBatcher(Generic[T, R]):
    """Collects items from concurrent coroutines and runs `fn(batch) -> results` once per batch on a thread."""

    def __init__(self, fn: Callable[[list[T]], list[R]], *, max_batch: int, max_delay_s: float,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._max_delay = max_delay_s
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="messplus-predict")
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        assert self._wakeup is not None
        self._wakeup.set()
        return await fut

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                continue
            deadline = time.monotonic() + self._max_delay
            while len(self._queue) < self._max_batch and time.monotonic() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            if self._queue:
                self._wakeup.set()
            await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]
        if not live:
            return
        self.batches += 1
        self.items += len(live)
        try:
            results = await loop.run_in_executor(self._executor, self._fn, [item for item, _ in live])
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), res in zip(live, results):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._executor.shutdown(wait=True)


def chat_to_text(messages: Sequence[Any]) -> str:
    """Chat messages as one prompt text, `role: content` per line (the predictor keeps the tail)."""
    return "\n".join(f"{m.role}: {m.content}" if m.role else m.content for m in messages)
