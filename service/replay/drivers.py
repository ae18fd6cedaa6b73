"""The routers a replay drives, behind one `Driver` interface: the service's router core in process
(`InProcess`; several of them on one shared state: replicas.py), or running services through their Route and
Feedback RPCs (`GrpcDriver`: one address, or several replicas)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..config import ModelConfig, PredictorConfig, TenantConfig
from ..demo.repository import triton_model_name
from ..errors import NoModelAvailable
from ..routing.heads import Heads
from ..routing.pricing import input_tokens
from ..routing.reference import PaperPolicy
from ..routing.registry import DEFAULT_POLICY, get_policy
from ..routing.router import Router
from ..routing.types import Decision, RouteItem
from ..state.base import Store
from ..state.sqlite import SqliteStore
from ..trace import Trace, TraceError

log = logging.getLogger("messplus.replay")
TENANT = "replay"


@dataclass(frozen=True)
class Step:
    served: int
    invoked: tuple[int, ...]
    exploration: bool
    queue: float
    handle: Any = None


class Driver(Protocol):
    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None: ...
    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None: ...
    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None: ...
    def queue(self) -> float: ...


class InProcess:
    """The service's Router (messplus's policy, or the MESS+ paper's) over an in-memory store, run inline."""

    def __init__(self, trace: Trace, tenant: TenantConfig, dim: int, *, reference: bool = False,
                 flat_costs: bool = False, store: Store | None = None) -> None:
        """`store`: the state to route on (default: a fresh in-memory one of its own; replay/replicas.py gives
        several of these one shared store)."""
        per_request, per_token = (trace.mean_cost, np.zeros(len(trace.models))) if flat_costs else trace.price_list()
        models = [ModelConfig(name=n, triton_model=n, cost_per_request=float(c), cost_per_input_token=float(t))
                  for n, c, t in zip(trace.models, per_request, per_token)]
        heads = Heads(trace.models, dim, prior_var=PredictorConfig().prior_var)  # the service's default prior
        policy = get_policy(PaperPolicy.name if reference else DEFAULT_POLICY)
        store = SqliteStore(":memory:", inline=True) if store is None else store
        self.router = Router(models, [tenant], heads, store, cache_size=len(trace) + 1, snapshot_every=1 << 62,
                             policy=policy)
        self._avail = np.ones(len(models), np.bool_)

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        for k in np.flatnonzero(avail != self._avail):
            self.router.set_available(int(k), bool(avail[k]))
        self._avail = avail.copy()
        (routed,) = self.router.route([RouteItem(tenant=TENANT, request_id=rid, input_tokens=input_tokens(text))],
                                      emb[None, :])
        if isinstance(routed, NoModelAvailable):
            return None
        d = routed.decision
        return Step(d.served, d.invoked, d.exploration, d.queue, d)

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        """Count the request as the service's Route does: at the router's own cost estimate (the price list
        and the prompt's length), never the prompt's recorded cost, which only the judge sees."""
        d: Decision = step.handle
        self.router.record(d, emb).result()

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        others = [(self.router.names[k], s) for k, s in labels.items() if k != served]
        self.router.feedback(TENANT, rid, labels.get(served), others).result()

    def queue(self) -> float:
        return self.router.tenants[TENANT].queue

    def close(self) -> None:
        self.router.store.close()


# ------------------------------------------------------------------------------- a running service (gRPC)
def match_models(service: Sequence[tuple[str, str]], trace_models: Sequence[str]) -> list[int]:
    """For each service model (name, triton_model), the trace column it replays (-1: none). A trace model
    matches by its own name or by the Triton name the demo zoo gives it."""
    out = []
    for name, triton in service:
        wanted = {name, triton}
        out.append(next((j for j, t in enumerate(trace_models) if t in wanted or triton_model_name(t) in wanted), -1))
    return out


class GrpcDriver:
    """Drives running messplus replicas through Route and Feedback (the service records and learns on its side).

    With several addresses (replicas on one shared state) Route goes round-robin and each Feedback to a replica
    drawn at random (seeded by `seed`), as a load balancer may send it: not necessarily the one that routed."""

    def __init__(self, addrs: str | Sequence[str], tenant: str, trace_models: Sequence[str], *,
                 timeout_s: float = 30.0, seed: int = 0, ca: bytes | None = None, token: str = "",
                 server_name: str = "") -> None:
        """`ca`: the PEM CA of routers serving TLS; `server_name`: the name their certificates carry when it is not
        the address's host; `token`: the bearer token of routers that want one."""
        import grpc

        from ..client import channel

        from messplus.v1 import routing_pb2 as pb
        from messplus.v1 import routing_pb2_grpc as pb_grpc

        self.grpc, self.pb, self.tenant, self.timeout_s = grpc, pb, tenant, timeout_s
        self.addrs = [addrs] if isinstance(addrs, str) else list(addrs)
        if not self.addrs:
            raise ValueError("GrpcDriver: no address")
        self.channels = [channel(a, ca=ca, token=token, server_name=server_name) for a in self.addrs]
        for addr, ch in zip(self.addrs, self.channels):
            try:
                grpc.channel_ready_future(ch).result(timeout=timeout_s)
            except grpc.FutureTimeoutError:
                hint = (" (or its certificate does not name that host: --tls-server-name gives the name it carries)"
                        if ca else "")
                raise ConnectionError(f"no router answers at {addr} within {timeout_s:g} s{hint}") from None
        self.stubs = [pb_grpc.RoutingServiceStub(c) for c in self.channels]
        self.stub = self.stubs[0]
        zoos = [[(m.name, m.triton_model) for m in s.ListModels(pb.ListModelsRequest(), timeout=timeout_s).models]
                for s in self.stubs]
        if any(z != zoos[0] for z in zoos):
            raise TraceError(f"the replicas at {', '.join(self.addrs)} serve different zoos")
        cols = match_models(zoos[0], trace_models)
        lost = [name for (name, _), j in zip(zoos[0], cols) if j < 0]
        if lost:
            raise TraceError(f"the service's models {lost} have no columns in the trace ({', '.join(trace_models)})")
        self.names = [name for name, _ in zoos[0]]
        self.trace_models = [trace_models[j] for j in cols]  # the trace, restricted to the zoo, in zoo order
        self.index = {n: k for k, n in enumerate(self.names)}
        status = self.stub.SlaStatus(pb.SlaStatusRequest(tenant=tenant), timeout=timeout_s)
        self.alpha = status.alpha
        if status.requests:
            log.warning("tenant %r has already routed %d requests: the service's state carries over", tenant,
                        status.requests)
        self._routed = 0
        self._rng = np.random.default_rng([seed, 3])

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        pb = self.pb
        ov = pb.RouteOverrides(excluded_models=[self.names[k] for k in np.flatnonzero(~avail)])
        stub = self.stubs[self._routed % len(self.stubs)]
        self._routed += 1
        try:
            reply = stub.Route(pb.RouteRequest(tenant=self.tenant, text=text, request_id=rid, overrides=ov),
                               timeout=self.timeout_s)
        except self.grpc.RpcError as exc:
            code, codes = exc.code(), self.grpc.StatusCode
            no_model = code == codes.UNAVAILABLE and "no zoo model" in (exc.details() or "")
            if code == codes.INVALID_ARGUMENT or no_model:
                log.warning("request %s not routed: %s", rid, exc.details())
                return None
            raise
        served = self.index[reply.model]
        invoked = tuple(sorted(self.index[m] for m in reply.explored_models)) if reply.exploration else (served,)
        return Step(served, invoked or (served,), reply.exploration, reply.queue)

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        """Nothing: Route recorded the request (at the service's own cost estimate)."""

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        pb = self.pb
        req = pb.FeedbackRequest(tenant=self.tenant, request_id=rid, labels=[
            pb.ModelSatisfaction(model=self.names[k], satisfaction=s) for k, s in labels.items() if k != served])
        if served in labels:
            req.satisfaction = labels[served]
        stub = self.stubs[int(self._rng.integers(len(self.stubs)))] if len(self.stubs) > 1 else self.stub
        stub.Feedback(req, timeout=self.timeout_s)

    def queue(self) -> float:
        """The first replica's queue (each replica's is the database's once its tail has caught up)."""
        return float(self.stub.SlaStatus(self.pb.SlaStatusRequest(tenant=self.tenant), timeout=self.timeout_s).queue)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
