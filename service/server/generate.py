"""The Triton calls of one Generate: the served model streamed to the caller, the other models an exploration
step invoked called in parallel, fallback to the next model when one fails before its first chunk, and each
finished call charged by the router's price list."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

from messplus.v1 import routing_pb2 as pb

from ..errors import DeadlineTooShort, InvalidArgument, NoModelAvailable
from ..routing.pricing import input_tokens
from ..routing.router import Router
from ..routing.types import Decision
from ..zoo.triton import ModelTimeout, ModelUnavailable, TritonUnreachable, TritonZoo, ZooError
from .metrics import Metrics


def sampling_parameters(s: pb.SamplingParameters) -> dict[str, float | int]:
    """The request's sampling parameters as the JSON Triton's vLLM convention takes; range-checked."""
    out: dict[str, float | int] = {}
    if s.max_tokens:
        out["max_tokens"] = int(s.max_tokens)
    for name in ("temperature", "top_p"):
        if s.HasField(name):
            v = getattr(s, name)
            if not math.isfinite(v) or v < 0 or (name == "top_p" and v > 1):
                raise InvalidArgument(f"sampling.{name}", f"out of range: {v}")
            out[name] = v
    return out


class Calls:
    """The Triton calls of one Generate: the served model streamed, the other explored models in parallel."""

    def __init__(self, router: Router, zoo: TritonZoo, metrics: Metrics, text: str,
                 sampling: dict[str, float | int], budget: float, *, callers_deadline: bool = False) -> None:
        self.router, self.zoo, self.metrics = router, zoo, metrics
        self.text, self.sampling = text, sampling
        self.tokens = input_tokens(text)  # what every call of this request is charged for its input
        self.deadline = time.monotonic() + budget  # one budget for every call of this request, not one per call
        self.budget, self.callers_deadline = budget, callers_deadline  # whose limit the budget is
        self.last: ZooError | None = None  # the served model's (or a fallback's) last failure
        self.counted: set[int] = set()  # models whose failure is in triton_errors already
        self.errors: dict[int, str] = {}  # each failed model's error, for its `answer`
        self.invoked: set[int] = set()
        self.latency_ms: dict[int, float] = {}
        self.served = -1
        self.cost = self.cost_raw = 0.0

    def _charge(self, k: int, output: str) -> None:
        raw, cost = self.router.charge(k, self.tokens, output)
        self.invoked.add(k)
        self.cost_raw += raw
        self.cost += cost

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0.005:
            if self.callers_deadline:
                raise DeadlineTooShort("the call's deadline expired before a model answered")
            raise NoModelAvailable(f"no model answered within the router's Triton timeout ({self.budget:.3g} s)"
                                   + (f"; last error: {self.last}" if self.last is not None else ""))
        return left

    def _failed(self, k: int, exc: ZooError) -> None:
        self.last = exc
        self.errors.setdefault(k, str(exc))
        if k in self.counted:  # an explored model's failure, seen by the fallback and again by the answers
            return
        self.counted.add(k)
        self.metrics.triton_errors.labels(self.router.names[k], type(exc).__name__).inc()
        if isinstance(exc, ModelUnavailable):
            self.router.set_available(k, False)

    async def _complete(self, k: int) -> str:
        name = self.router.models[k].triton_model
        started = time.perf_counter()
        try:
            out = await self.zoo.complete(name, self.text, sampling=self.sampling, timeout_s=self._left())
        finally:
            self.latency_ms[k] = (time.perf_counter() - started) * 1e3
            self.metrics.triton.labels(self.router.names[k]).observe(self.latency_ms[k] / 1e3)
        self._charge(k, out)
        return out

    async def run(self, d: Decision) -> AsyncIterator[pb.GenerateReply]:
        order = d.fallback_order()
        others = {k: asyncio.ensure_future(self._complete(k)) for k in d.invoked if k != d.served}
        try:
            async for reply in self._serve(order, others):
                yield reply
            if self.served != d.served and d.exploration:  # the routed model failed before its first chunk
                yield pb.GenerateReply(answer=pb.ModelAnswer(model=self.router.names[d.served], text="",
                                                             error=self.errors.get(d.served, ""),
                                                             latency_ms=self.latency_ms.get(d.served, 0.0)))
            for k, task in others.items():
                if k == self.served:
                    continue
                try:
                    text, err = await task, ""
                except ZooError as exc:
                    text, err = "", str(exc)
                    self._failed(k, exc)
                yield pb.GenerateReply(answer=pb.ModelAnswer(model=self.router.names[k], text=text, error=err,
                                                             latency_ms=self.latency_ms.get(k, 0.0)))
        finally:
            for task in others.values():
                task.cancel()
                task.add_done_callback(_retrieve)  # a call that failed unread is not "never retrieved" in the log

    async def _serve(self, order: list[int], others: dict[int, asyncio.Future[str]]) -> AsyncIterator[pb.GenerateReply]:
        for k in order:
            k = int(k)
            if k in others:  # an explored model answered already: serve its answer whole
                try:
                    text = await others[k]
                except ZooError as exc:
                    self._failed(k, exc)
                    continue
                self.served = k
                yield pb.GenerateReply(text=text)
                return
            chunks: list[str] = []
            started = time.perf_counter()
            try:
                name = self.router.models[k].triton_model
                async for chunk in self.zoo.generate(name, self.text, sampling=self.sampling, timeout_s=self._left()):
                    chunks.append(chunk)
                    yield pb.GenerateReply(text=chunk)
            except ZooError as exc:
                self.latency_ms[k] = (time.perf_counter() - started) * 1e3  # the failed routed model's answer event
                self._failed(k, exc)
                if chunks and self.callers_deadline and isinstance(exc, ModelTimeout):
                    raise DeadlineTooShort("the call's deadline expired while the model answered") from exc
                if chunks:
                    raise NoModelAvailable(f"model {self.router.names[k]!r} failed mid-answer: {exc}") from exc
                if isinstance(exc, TritonUnreachable):  # no other model of this Triton can answer either
                    break
                continue
            self.metrics.triton.labels(self.router.names[k]).observe(time.perf_counter() - started)
            self.served = k
            self._charge(k, "".join(chunks))
            return
        if isinstance(self.last, TritonUnreachable):  # not the models: Triton itself ("Triton at HOST:PORT unreachable")
            raise NoModelAvailable(str(self.last))
        raise NoModelAvailable(f"every available model failed; last error: {self.last}")


def _retrieve(task: asyncio.Future[str]) -> None:
    if not task.cancelled():
        task.exception()
