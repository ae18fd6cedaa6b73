"""Prometheus metrics, on their own HTTP port (`server.metrics_listen`), in a registry of their own.

Per tenant (read from the router at scrape time, so they are never stale):
  messplus_tenant_queue, messplus_tenant_alpha, messplus_tenant_satisfaction (running mean of served labels),
  messplus_tenant_sla_met, messplus_tenant_requests_total, messplus_tenant_labelled_total,
  messplus_tenant_cost_total / _cost_raw_total (exploration included), messplus_tenant_exploration_steps_total,
  messplus_tenant_exploration_rate.
Per model: messplus_model_selections_total{tenant,model} (answers served), messplus_model_invocations_total,
  messplus_model_available, messplus_triton_request_duration_seconds, messplus_triton_errors_total{kind},
  messplus_triton_streams_open,
  calibration: messplus_label_predicted_total / messplus_label_observed_total / messplus_labels_total (the mean
  predicted satisfaction of labelled answers against the mean observed one), counted by the router that routed
  the request (with a shared store from the label log, so a Feedback taken by another replica counts too).
State: messplus_state_up{backend} (1 when the store commits and, if shared, its counters can be read; while a
  shared store cannot be read, the fleet-wide tenant counters above are left out of the scrape, the queue stays),
  messplus_label_log_stuck{backend} (1 while this router fails to take in labels of the shared log).
Triton: messplus_triton_up (1 when the last poll reached it), messplus_triton_problem{reason} (1 for the reason
  it cannot serve now, 0 for the others: refused, dns, timeout, unreachable, not_ready; the log has the text).
Per RPC: messplus_rpc_duration_seconds{method,code} (Route and Generate latency histograms among them).
  Refusals for overload (server.max_inflight, a tenant's rate limit) are its code="RESOURCE_EXHAUSTED" series.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import StorageUnavailable
from ..zoo.monitor import PROBLEMS
from ..zoo.triton import ModelFailed, ModelTimeout, ModelUnavailable, TritonUnreachable

if TYPE_CHECKING:
    from ..routing.router import Decision, Router
    from ..state.base import LabelEvent
    from ..zoo.monitor import TritonMonitor
    from ..zoo.triton import TritonZoo

_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _RouterCollector(Collector):
    """The router's per-tenant and per-model state, read at scrape time."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        r = self.router
        g = {name: GaugeMetricFamily(f"messplus_tenant_{name}", doc, labels=["tenant"]) for name, doc in (
            ("queue", "the tenant's virtual queue Q (0 = the SLA constraint is slack)"),
            ("alpha", "the tenant's satisfaction target"),
            ("satisfaction", "mean satisfaction of the served answers that have feedback"),
            ("sla_met", "1 when satisfaction >= alpha (or nothing is labelled yet)"),
            ("exploration_rate", "exploration steps / routed requests"))}
        c = {name: CounterMetricFamily(f"messplus_tenant_{name}", doc, labels=["tenant"]) for name, doc in (
            ("requests", "routed requests"), ("labelled", "requests whose served answer has feedback"),
            ("cost", "normalised cost of every model call, exploration included"),
            ("cost_raw", "cost in the zoo's configured unit, exploration included"),
            ("exploration_steps", "exploration steps"))}
        sel = CounterMetricFamily("messplus_model_selections", "answers served per model", labels=["tenant", "model"])
        inv = CounterMetricFamily("messplus_model_invocations", "calls per model, exploration included",
                                  labels=["tenant", "model"])
        try:
            views, fleet = r.tenant_views(), True
        except StorageUnavailable:  # a shared store's counters cannot be read now: this replica's queue only
            views, fleet = r.tenant_views(merged=False), False
        for st in views:
            name = st.cfg.name
            g["queue"].add_metric([name], st.queue)
            g["alpha"].add_metric([name], st.cfg.alpha)
            if not fleet:  # the rest are the fleet's counters: a gap in the series, not a jump down and back
                continue
            for key, value in (("satisfaction", st.satisfaction), ("sla_met", float(st.sla_met)),
                               ("exploration_rate", st.explore_steps / st.requests if st.requests else 0.0)):
                g[key].add_metric([name], value)
            for key, value in (("requests", st.requests), ("labelled", st.labelled), ("cost", st.cost_sum),
                               ("cost_raw", st.cost_raw_sum), ("exploration_steps", st.explore_steps)):
                c[key].add_metric([name], float(value))
            for k, model in enumerate(r.names):
                sel.add_metric([name, model], float(st.served[k]))
                inv.add_metric([name, model], float(st.invoked[k]))
        avail = GaugeMetricFamily("messplus_model_available", "1 when Triton reports the model ready", labels=["model"])
        for k, model in enumerate(r.names):
            avail.add_metric([model], float(r.available[k]))
        state = GaugeMetricFamily("messplus_state_up", "1 when the state store commits and, if shared, can be read "
                                  "(0: Feedback answers UNAVAILABLE; the log says why)", labels=["backend"])
        state.add_metric([r.store.backend], float(fleet and not r.store.error))
        stuck = GaugeMetricFamily("messplus_label_log_stuck", "1 while this router fails to take in labels of the "
                                  "shared log (read again every poll; the log names them)", labels=["backend"])
        stuck.add_metric([r.store.backend], float(bool(r.store.log_stuck)))
        yield from g.values()
        yield from c.values()
        yield from (sel, inv, avail, state, stuck)


class _TritonCollector(Collector):
    """Triton's state as the last poll saw it."""

    def __init__(self, monitor: TritonMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.monitor.state
        up = GaugeMetricFamily("messplus_triton_up", "1 when the last poll reached Triton (whatever its models do)")
        up.add_metric([], float(state.reachable))
        problem = GaugeMetricFamily("messplus_triton_problem", "1 for the reason Triton cannot serve every zoo "
                                    "model now (the log line names the address and the details)", labels=["reason"])
        for reason in PROBLEMS:
            problem.add_metric([reason], float(state.kind == reason))
        yield from (up, problem)


class Metrics:
    """Every metric of one router process, and the hooks the handlers call."""

    def __init__(self, max_pending: int = 50_000) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds and the rest: the alert rules tell a pod that is starting from one that broke
        ProcessCollector(registry=self.registry)
        self.rpc = Histogram("messplus_rpc_duration_seconds", "RoutingService call latency by method and status",
                             ["method", "code"], registry=self.registry, buckets=_RPC_BUCKETS)
        self.triton = Histogram("messplus_triton_request_duration_seconds", "latency of one Triton model call",
                                ["model"], registry=self.registry, buckets=_RPC_BUCKETS)
        self.triton_errors = Counter("messplus_triton_errors", "failed Triton calls by model and kind",
                                     ["model", "kind"], registry=self.registry)
        self.predicted = Counter("messplus_label_predicted", "sum of p_hat over labelled answers (calibration)",
                                 ["model"], registry=self.registry)
        self.observed = Counter("messplus_label_observed", "sum of observed satisfaction over labelled answers",
                                ["model"], registry=self.registry)
        self.labels = Counter("messplus_labels", "labels received per model", ["model"], registry=self.registry)
        self._pending: OrderedDict[str, tuple[int, tuple[float, ...]]] = OrderedDict()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._router: Router | None = None
        self.http = None

    def watch(self, router: Router) -> None:
        self._router = router
        self.registry.register(_RouterCollector(router))
        if router.store.shared:  # calibration from the label log: Feedback may reach another replica
            router.label_listeners.append(self._logged)
        for model in router.names:  # every error series from 0, so that rate() and alerts see the first error
            for kind in (ModelUnavailable, TritonUnreachable, ModelTimeout, ModelFailed):
                self.triton_errors.labels(model, kind.__name__)

    def watch_zoo(self, zoo: TritonZoo) -> None:
        streams = Gauge("messplus_triton_streams_open", "Triton response streams still open (each ends by its "
                        "call's deadline)", registry=self.registry)
        streams.set_function(lambda: zoo.open_streams)

    def watch_triton(self, monitor: TritonMonitor) -> None:
        self.registry.register(_TritonCollector(monitor))

    def serve(self, listen: str) -> int:
        """Start the HTTP endpoint on HOST:PORT (port 0: any free port); returns the bound port."""
        host, _, port = listen.rpartition(":")
        try:
            self.http, _ = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as exc:  # in use, or a host that does not resolve or is not this machine's
            why = exc.strerror or str(exc)
            raise OSError(f"cannot serve metrics on {listen}: {why}; set server.metrics_listen "
                          "(MESSPLUS_SERVER_METRICS_LISTEN)") from exc
        return int(self.http.server_address[1])

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None

    # -- hooks -----------------------------------------------------------------------------------------------
    def routed(self, d: Decision, served: int | None = None) -> None:
        """Remember what was predicted for a request, for calibration when its feedback arrives."""
        with self._lock:
            self._pending[d.request_id] = (d.served if served is None else served, tuple(map(float, d.p_hat)))
            while len(self._pending) > self._max_pending:
                self._pending.popitem(last=False)

    def labelled(self, request_id: str, satisfaction: float | None, labels: list[tuple[str, float]]) -> None:
        """Predicted against observed, once per request (its first accepted feedback); with a shared store the
        label log counts them instead (`_logged`)."""
        if self._router is None or self._router.store.shared:
            return
        names = self._router.names
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is None:
            return
        seen = {names[pending[0]]: satisfaction} if satisfaction is not None else {}
        seen.update({m: s for m, s in labels if m not in seen})
        self._calibrate(request_id, seen)

    def _logged(self, events: Sequence[LabelEvent]) -> None:
        """The labels of the shared log (on the store's writer thread): those of requests this replica routed,
        whichever replica took their Feedback, each request once (the labels of its first Feedback)."""
        assert self._router is not None
        mine: dict[str, dict[str, float | None]] = {}
        for ev in events:
            if ev.replica == self._router.replica:
                mine.setdefault(ev.request_id, {}).setdefault(ev.model, ev.satisfaction)
        for request_id, seen in mine.items():
            self._calibrate(request_id, seen)

    def _calibrate(self, request_id: str, seen: dict[str, float | None]) -> None:
        assert self._router is not None
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        _, p_hat = pending
        for model, s in seen.items():
            k = self._router.index.get(model)
            if k is None or s is None:
                continue
            self.predicted.labels(model).inc(p_hat[k])
            self.observed.labels(model).inc(s)
            self.labels.labels(model).inc()
