"""Is Triton there, and if not, why: the state the server polls (readiness, health, metrics, error texts), and one
log line at the first poll and at every change of it.

A poll asks Triton's liveness first (so a Triton that cannot be reached says why: refused, a name that does not
resolve, no answer in time, not a Triton), then every zoo model's readiness, and for the models that are not ready
the reason Triton's model repository gives (a model that failed to load, was unloaded, or is not in it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from tritonclient.utils import InferenceServerException

from .triton import TritonZoo, unreachable

log = logging.getLogger("messplus.triton")
# Why Triton cannot serve, as a metric label takes it (a fixed set): the first four are "unreachable".
UNREACHABLE = ("refused", "dns", "timeout", "unreachable")
PROBLEMS = (*UNREACHABLE, "not_ready")
_REASON_CHARS = 300


@dataclass(frozen=True)
class TritonState:
    """One poll's answer. `kind` is "up" (every zoo model ready), "starting" (not polled yet), or a PROBLEMS entry."""

    url: str
    kind: str = "starting"
    reason: str = ""
    ready: Mapping[str, bool] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.kind not in UNREACHABLE and self.kind != "starting"

    @property
    def problem(self) -> str:
        """What an operator or a caller should read when a model cannot be served ("" when every model is ready)."""
        if self.kind == "up":
            return ""
        if self.kind == "starting":
            return f"Triton at {self.url} not polled yet"
        if not self.reachable:
            return f"Triton at {self.url} unreachable ({self.reason})"
        return f"Triton at {self.url}: {sum(self.ready.values())}/{len(self.ready)} zoo models ready; {self.reason}"

    def line(self) -> str:
        """The log line of this state."""
        if self.kind == "up":
            return f"Triton at {self.url} reachable: {len(self.ready)}/{len(self.ready)} zoo models ready"
        consequence = ("health NOT_SERVING; Route and Generate answer UNAVAILABLE until it answers"
                       if not any(self.ready.values()) else "the other models serve")
        return f"{self.problem}: {consequence}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


async def probe(zoo: TritonZoo, names: Sequence[str], timeout_s: float) -> TritonState:
    """Poll Triton once for the zoo models `names` (Triton model names)."""
    try:
        live = await zoo.live(timeout_s)
    except (InferenceServerException, grpc.RpcError) as exc:
        kind, reason = unreachable(exc, timeout_s) or ("unreachable", f"{type(exc).__name__}: {exc}")
        return TritonState(zoo.url, kind, _short(reason), dict.fromkeys(names, False))
    if not live:
        return TritonState(zoo.url, "not_ready", "the server says it is not live", dict.fromkeys(names, False))
    ready = await zoo.ready_models(names, timeout_s)
    if all(ready.values()):
        return TritonState(zoo.url, "up", "", ready)
    try:
        index = await zoo.repository_index(timeout_s)
    except (InferenceServerException, grpc.RpcError) as exc:
        index, note = {}, f" (its model repository index failed: {_short(str(exc))})"
    else:
        note = ""
    parts = []
    for name in (n for n, ok in ready.items() if not ok):
        state, why = index.get(name, ("", ""))
        parts.append(f"{name} ({state}: {why})" if state and why else f"{name} ({state})" if state
                     else f"{name} (not in Triton's model repository)")
    return TritonState(zoo.url, "not_ready", _short("not ready: " + ", ".join(parts) + note), ready)


class TritonMonitor:
    """The last polled TritonState of one zoo; `poll()` logs a line when the state changes (and at the first)."""

    def __init__(self, zoo: TritonZoo, names: Sequence[str], timeout_s: float = 2.0) -> None:
        self.zoo = zoo
        self.names = list(names)
        self.timeout_s = timeout_s
        self.state = TritonState(zoo.url)

    async def poll(self) -> TritonState:
        state = await probe(self.zoo, self.names, self.timeout_s)
        before, self.state = self.state, state
        if (state.kind, state.reason, dict(state.ready)) != (before.kind, before.reason, dict(before.ready)):
            log.log(logging.INFO if state.kind == "up" else logging.WARNING, "%s", state.line(),
                    extra={"triton_url": state.url, "triton_state": state.kind})
        return state
