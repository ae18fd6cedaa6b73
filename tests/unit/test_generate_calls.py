"""One Generate's Triton calls (server/generate.py) against a zoo that fails on purpose: which failures are
counted, and which status a spent budget gets. A model failing while another answers cannot be arranged on the
demo zoo's Triton (every model shares its latency), so the zoo here is a double; tests/functional has the real
Triton's timeouts and outages."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from messplus.service.errors import DeadlineTooShort, NoModelAvailable
from messplus.service.routing.types import Decision, RouteItem
from messplus.service.server.generate import Calls
from messplus.service.server.metrics import Metrics
from messplus.service.zoo.triton import ModelFailed, ModelTimeout

from .test_router import make_router


class Zoo:
    """Each Triton model answers, fails, or hangs until its timeout."""

    def __init__(self, **behaviour: str) -> None:
        self.behaviour = behaviour

    async def _act(self, name: str, timeout_s: float) -> None:
        if self.behaviour.get(name) == "fail":
            raise ModelFailed(name, "boom")
        if self.behaviour.get(name) == "hang":
            await asyncio.sleep(timeout_s)
            raise ModelTimeout(name, timeout_s)

    async def complete(self, name: str, text: str, *, sampling: dict, timeout_s: float) -> str:
        await self._act(name, timeout_s)
        return f"{name} says hi"

    async def generate(self, name: str, text: str, *, sampling: dict, timeout_s: float) -> AsyncIterator[str]:
        await self._act(name, timeout_s)
        yield f"{name} says hi"


def run(zoo: Zoo, served: str, explored: tuple[str, ...], budget: float, tmp_path: Path,
        callers_deadline: bool = False) -> tuple[Calls, Metrics, list[str]]:
    router = make_router(tmp_path / "state.sqlite3")
    p = np.array([[0.5, 0.7, 0.9]])
    (d,) = router.decide([RouteItem(tenant="acme")], p, np.zeros_like(p))
    assert isinstance(d, Decision)
    k = router.index[served]
    invoked = tuple(sorted({k, *(router.index[m] for m in explored)}))
    d = replace(d, served=k, choice=k, invoked=invoked, exploration=bool(explored))
    metrics = Metrics()
    call = Calls(router, zoo, metrics, "hi", {}, budget, callers_deadline=callers_deadline)  # type: ignore[arg-type]

    async def drain() -> list[str]:
        return [r.WhichOneof("event") async for r in call.run(d)]

    try:
        return call, metrics, asyncio.run(drain())
    finally:
        router.store.close()


def errors_counted(metrics: Metrics) -> dict[str, float]:
    return {s.labels["model"]: s.value for s in metrics.triton_errors.collect()[0].samples
            if s.name.endswith("_total") and s.value}


def test_an_explored_model_that_failed_is_counted_once(tmp_path: Path) -> None:
    # served "cheap" fails; the fallback tries explored "mid" (fails too), then "big" answers; the answers part
    # of the stream reports "mid" failed again without counting it twice
    call, metrics, events = run(Zoo(cheap="fail", mid="fail"), "cheap", ("mid",), 5.0, tmp_path)
    assert call.served == 2 and "answer" in events
    assert errors_counted(metrics) == {"cheap": 1.0, "mid": 1.0}


def test_a_spent_budget_is_the_callers_deadline_only_when_the_caller_set_it(tmp_path: Path) -> None:
    with pytest.raises(NoModelAvailable, match=r"Triton timeout \(0.2 s\); last error: .*did not answer"):
        run(Zoo(cheap="hang", mid="hang", big="hang"), "cheap", (), 0.2, tmp_path)
    with pytest.raises(DeadlineTooShort):
        run(Zoo(cheap="hang", mid="hang", big="hang"), "cheap", (), 0.2, tmp_path / "b", callers_deadline=True)
