"""Server lifecycle: prepare what is missing, start Triton (embedded default) and the gRPC server, drain on exit.

Start order: config -> state dir -> Triton (embedded: demo repository + local tritonserver) -> predictor
(ONNX export on first start) -> kernels warm-up -> SQLite store -> router (queues and heads restored) -> gRPC
server (health NOT_SERVING until the zoo answers). Stop order: health NOT_SERVING, stop accepting, let
in-flight calls finish (grace), snapshot the heads, close the store, stop Triton.

`async with App(cfg) as app:` runs both: start on entry, the drain on exit (`serve()` is that block between
the signal handlers; tests run the same block in process).

A Route-only router (`triton.url = "none"`) has no Triton at all: no zoo client, no readiness poll; every zoo
model is available, health is SERVING once the gRPC server is, and Generate answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from messplus import kernels
from messplus.v1 import routing_pb2, routing_pb2_grpc

from .. import config as config_mod
from .. import logs
from ..config import Config
from ..routing.heads import Heads
from ..routing.registry import get_policy
from ..routing.router import Router
from ..routing.types import RouteItem, Routed
from ..state import describe as describe_state
from ..state import open_store
from ..zoo.embedded import StartInterrupted, start_embedded_triton
from ..zoo.monitor import TritonMonitor
from ..zoo.triton import TritonZoo
from .batcher import MicroBatcher
from .guard import SIDE_STREAMS, Admission, GuardInterceptor, SideStreamCap
from .metrics import Metrics
from .security import RateLimiter, TokenAuth, check_grants, load_tokens, server_credentials
from .servicer import RoutingServicer
from .status import ErrorInterceptor

log = logging.getLogger("messplus.app")
SERVICE_NAME = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name
# Health names: "" and SERVICE_NAME follow readiness (some zoo model is ready on Triton); LIVENESS is SERVING
# from start until the drain, whatever Triton does, for a liveness probe that must not restart the router
# because Triton is down.
LIVENESS = "messplus.liveness"
# STATE is SERVING while the state store commits: NOT_SERVING says Feedback is refused (UNAVAILABLE) and Route
# buffers its records (a PostgreSQL that went away), while Route itself keeps serving.
STATE = "messplus.state"
TRITON_RESTART_S = (1.0, 60.0)  # the embedded Triton is restarted after 1 s, 2 s, 4 s, ... at most 60 s while it fails
Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"messplus: {msg}", file=sys.stderr, flush=True)


def load_encoder(cfg: Config, progress: Progress):  # type: ignore[no-untyped-def]
    from ..encoder import Encoder, default_model_dir, ensure_exported

    onnx_path = Path(cfg.predictor.onnx) if cfg.predictor.onnx else ensure_exported(cfg.state_dir, progress)
    providers = [p for p in cfg.predictor.providers.split(",") if p] or None
    tokenizer = Path(cfg.predictor.tokenizer) if cfg.predictor.tokenizer else default_model_dir() / "tokenizer.json"
    return Encoder.load(onnx_path, tokenizer, max_tokens=cfg.predictor.max_tokens,
                        threads=cfg.predictor.threads or None, providers=providers,
                        sub_batch=cfg.predictor.sub_batch or None)


class App:
    """Everything one `messplus serve` runs: `async with App(cfg) as app:` starts it, leaving the block drains it."""

    def __init__(self, cfg: Config, progress: Progress = _say) -> None:
        self.cfg = cfg
        self.progress = progress
        self.triton = None
        self.zoo: TritonZoo | None = None
        self.monitor: TritonMonitor | None = None
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self.metrics = Metrics()
        self.health: health.aio.HealthServicer | None = None
        self.side_streams = SideStreamCap()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._state_error = ""
        self._state_down_at = 0.0
        self._triton_backoff, self._triton_retry_at = 0.0, 0.0  # the embedded Triton's restarts (_watch_triton)
        self.abort = threading.Event()  # set: the start is called off (serve() got SIGTERM or SIGINT during it)

    def _prepare(self) -> None:
        cfg = self.cfg
        self.policy = get_policy(cfg.routing.policy)  # an unknown name stops the start (ConfigError)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if cfg.embedded_triton:
            self.triton, demo_models = start_embedded_triton(cfg.state_dir, self.progress, self.abort)
            cfg = config_mod.with_defaults(cfg, demo_models)
            triton_url = self.triton.grpc_url
        else:
            cfg = config_mod.with_defaults(cfg, ())
            triton_url = "" if cfg.route_only else cfg.triton.url
        self.cfg = cfg
        self._go_on()
        self.progress("loading the predictor (ONNX Runtime)")
        encoder = load_encoder(cfg, self.progress)
        self._go_on()
        took = kernels.warmup()
        self.progress(f"kernels ready in {took:.2f}s; predictor on {', '.join(encoder.providers)}")
        heads = Heads([m.name for m in cfg.zoo.models], encoder.dim, prior_var=cfg.predictor.prior_var,
                      prior_accuracy=[m.prior_accuracy for m in cfg.zoo.models])
        sqlite_path = str(cfg.state_dir / "messplus.sqlite3")
        self.store = open_store(cfg.state, sqlite_path)
        self.progress(f"state: {describe_state(cfg.state, sqlite_path)}")
        self.router = Router(cfg.zoo.models, cfg.tenants, heads, self.store, cost_ema=cfg.zoo.cost_ema,
                             snapshot_every=cfg.state.snapshot_every_labels, policy=self.policy)
        self.encoder = encoder
        self.triton_url = triton_url

    def _go_on(self) -> None:
        if self.abort.is_set():
            raise StartInterrupted("the start was interrupted")

    def _route_batch(self, items: list[tuple[str, RouteItem]]) -> list[Routed | Exception]:
        emb = self.encoder.encode([text for text, _ in items])
        return list(self.router.route([it for _, it in items], emb))

    async def start(self) -> int:
        await asyncio.to_thread(self._prepare)
        cfg = self.cfg
        if not cfg.route_only:
            self.zoo = TritonZoo(self.triton_url)
            self.monitor = TritonMonitor(self.zoo, [m.triton_model for m in cfg.zoo.models])
            self.metrics.watch_zoo(self.zoo)
            self.metrics.watch_triton(self.monitor)
        self.batcher = MicroBatcher(self._route_batch, max_batch=cfg.predictor.batch_max,
                                    max_delay_s=cfg.predictor.batch_delay_ms / 1e3,
                                    gather=cfg.predictor.batch_gather)
        size = cfg.server.max_message_bytes
        self.metrics.watch(self.router)
        tokens = load_tokens(cfg.security)
        check_grants(tokens, self.router.tenants)
        guard = GuardInterceptor(auth=TokenAuth(tokens),
                                 admission=Admission(cfg.server.max_inflight),
                                 limiter=RateLimiter(cfg.security.rate_limit_rps, cfg.security.rate_limit_burst),
                                 metrics=self.metrics, tenants=self.router.tenants)
        self.server = grpc.aio.server(
            # the error mapping wraps the guard: its refusals get statuses; health and reflection streams are capped
            interceptors=[ErrorInterceptor(), guard, self.side_streams],
            # a backstop per connection, above what the guard and the cap admit: a call whose request never comes
            # runs no handler, so they never see it; under a server-wide bound (maximum_concurrent_rpcs) a few
            # hundred such calls from one caller, no token needed, had every other caller refused, the liveness
            # probe included. Per connection, they fill their own connection only (its next calls wait there).
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
                     ("grpc.max_concurrent_streams", cfg.server.max_inflight + SIDE_STREAMS + 256),
                     # gRPC binds with SO_REUSEPORT on Linux: a second router on the same address started and
                     # silently took half the calls, on a state of its own. An address in use refuses the start.
                     ("grpc.so_reuseport", 0)])
        servicer = RoutingServicer(self.router, self.batcher, self.zoo, max_prompt_chars=cfg.server.max_prompt_chars,
                                   triton_timeout_s=cfg.triton.timeout_s, cost_unit=cfg.zoo.cost_unit,
                                   metrics=self.metrics, triton=self.monitor, max_streams=cfg.server.max_inflight,
                                   record_wait_s=cfg.state.record_wait_s)
        routing_pb2_grpc.add_RoutingServiceServicer_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        creds = server_credentials(cfg.security)
        bind_error: RuntimeError | None = None
        try:  # gRPC says "Failed to bind" (a RuntimeError) or returns port 0
            self.port = (self.server.add_secure_port(cfg.server.listen, creds) if creds
                         else self.server.add_insecure_port(cfg.server.listen))
        except RuntimeError as exc:
            self.port, bind_error = 0, exc
        if not self.port:
            raise OSError(f"cannot listen on {cfg.server.listen}: the address is in use (another router?) or not "
                          "this machine's; set server.listen (MESSPLUS_SERVER_LISTEN)") from bind_error
        await self.server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(STATE, health_pb2.HealthCheckResponse.SERVING)
        if cfg.server.metrics_listen:
            self.metrics_port = self.metrics.serve(cfg.server.metrics_listen)
            self.progress(f"Prometheus metrics on http://{cfg.server.metrics_listen.rpartition(':')[0]}:"
                          f"{self.metrics_port}/metrics")
        await self._poll_zoo()
        self._tasks.append(asyncio.create_task(self._poll_forever()))
        host = cfg.server.listen.rpartition(":")[0]
        tls = ("mutual TLS" if cfg.security.tls_client_ca else "TLS") if creds else "plaintext"
        self.progress(f"listening on {host}:{self.port} ({tls}; gRPC: {SERVICE_NAME}, health, reflection)")
        return self.port

    async def _set_health(self, serving: bool) -> None:
        if self.health is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _poll_zoo(self) -> None:
        if self.monitor is None:  # Route-only: nothing to poll, every model stays available
            if not self._stopping:
                await self._set_health(True)
            return
        ready = (await self.monitor.poll()).ready  # logs a line when Triton's state changes
        for k, m in enumerate(self.cfg.zoo.models):
            self.router.set_available(k, ready.get(m.triton_model, False))
        if not self._stopping:
            await self._set_health(any(ready.values()))

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.triton.ready_poll_s)
            for poll in (self._watch_triton, self._poll_zoo, self._poll_state):  # a failing one does not starve the others
                try:
                    await poll()
                except Exception:  # noqa: BLE001 - the poller must outlive a bad round
                    log.exception("%s failed", poll.__name__.strip("_").replace("_", " "))

    async def _watch_triton(self) -> None:
        """The embedded Triton exited by itself (a crash, the OOM killer): say why, with its log's tail, and start
        it again on the same port, at most every TRITON_RESTART_S[1] seconds while it keeps failing."""
        triton = self.triton
        if triton is None or self._stopping or triton.running() or time.monotonic() < self._triton_retry_at:
            return
        code = triton.exit_code()
        log.error("the embedded Triton exited (code %s); restarting it. Its log (%s) ends:\n%s", code,
                  triton.log_path, triton.log_tail(20))
        wait = min(max(2 * self._triton_backoff, TRITON_RESTART_S[0]), TRITON_RESTART_S[1])
        # the restart holds this poll loop for seconds: the readiness poll first, so that probes, the metrics
        # and Route see Triton gone meanwhile (they stayed SERVING and up through the whole restart before)
        try:
            await self._poll_zoo()
        except Exception:  # noqa: BLE001 - the restart matters more
            log.exception("poll zoo failed")
        try:
            await asyncio.to_thread(triton.restart)
        except Exception as exc:  # noqa: BLE001 - logged; tried again after the backoff
            self._triton_backoff, self._triton_retry_at = wait, time.monotonic() + wait
            log.error("the embedded Triton did not come back (%s); trying again in %.0f s", exc, wait)
            return
        self._triton_backoff = 0.0
        log.warning("the embedded Triton is back on %s after %.1f s", triton.grpc_url, triton.startup_s or 0.0)

    async def _poll_state(self) -> None:
        """Health `messplus.state` follows the store. One log line when it becomes unavailable, with the reason,
        and one when it is back: while it is down the reason moves between the writer's failed commit and the
        tail's lost connection as each reconnects, and a line per move read as a store that kept flapping."""
        error = self.store.error
        if error == self._state_error:
            return
        was, self._state_error = self._state_error, error
        if error and was:
            log.debug("state store (%s) still unavailable: %s", self.cfg.state.backend, error)
            return
        if error:
            self._state_down_at = time.monotonic()
            log.error("state store (%s) unavailable: %s; Feedback answers UNAVAILABLE, Route buffers its records",
                      self.cfg.state.backend, error)
        else:
            log.warning("state store (%s) available again after %.1f s", self.cfg.state.backend,
                        time.monotonic() - self._state_down_at)
        if self.health is not None and not self._stopping:
            status = health_pb2.HealthCheckResponse
            await self.health.set(STATE, status.NOT_SERVING if error else status.SERVING)

    async def __aenter__(self) -> App:
        try:
            await self.start()
        except BaseException:
            await self.__aexit__()  # a failed start still stops what it started (Triton, ports, the store)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """The drain (stop()). A failure in it is logged, not raised: the server goes away either way."""
        try:
            await self.stop()
        except Exception:  # noqa: BLE001 - never mask the exception that ended the block
            log.exception("stop failed")

    async def stop(self) -> None:
        """Drain: health NOT_SERVING first, in-flight calls finish within grace, then state is flushed."""
        if self._stopping:
            return
        self._stopping = True
        began = time.monotonic()
        if self.server is not None:
            await self._set_health(False)
            if self.health is not None:
                await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(self.cfg.server.drain_delay_s)  # let load balancers see NOT_SERVING first
            self.side_streams.close()  # health Watch streams never end: the grace is for calls that do
            await self.server.stop(self.cfg.server.grace_s)
        for task in self._tasks:
            task.cancel()
        if hasattr(self, "batcher"):
            await self.batcher.close()
            self.progress(self.batcher.summary())
        if hasattr(self, "router"):
            try:  # the heads are replayed from the label log after a restart anyway: the rest of the stop runs
                await asyncio.wrap_future(self.router.snapshot())
            except Exception as exc:  # noqa: BLE001 - the state store down at the stop
                log.error("the heads' snapshot at stop failed (%s); the next start replays their labels", exc)
        if hasattr(self, "store"):  # a SQLite state's lock goes with it
            self.store.close()
        drained = time.monotonic() - began
        if self.zoo is not None:
            await self.zoo.close()
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)
        self.metrics.close()
        if self.server is not None or hasattr(self, "store") or self.triton is not None:  # else nothing had started
            self.progress(f"drained and flushed in {drained:.2f}s; stopped in {time.monotonic() - began:.2f}s")


def _write_atomic(path: str, text: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _freeze_heap() -> None:
    """Take what the start-up built (some 150,000 objects: the imports of numba, ONNX Runtime, gRPC, tritonclient)
    out of the cyclic garbage collector's reach, once it is serving: a full collection walked all of it (86-96 ms
    in a running router, every thread stopped), and so did the interpreter's exit after the last log line (0.40-0.55
    s; frozen, 0.08-0.11 s). Its garbage is collected first, so none of it is kept for good."""
    gc.collect()
    gc.freeze()


async def serve(cfg: Config, *, port_file: str | None = None) -> None:
    logs.configure(cfg.server.log_format)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # with JSON logs every line on stderr is a JSON object: the start's and the stop's lines too
    app = App(cfg, progress=_say if cfg.server.log_format == "text" else logging.getLogger("messplus").info)
    # the start runs beside the signal: one during it calls it off (Triton's start is waited for up to
    # triton.startup_timeout_s, and a stop used to wait that out, then start the server, then drain it)
    starting, signalled = asyncio.ensure_future(app.__aenter__()), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            app.progress("stopping: interrupted during start-up")
            app.abort.set()
        try:
            await starting  # a failed or interrupted start has stopped what it had started (App.__aenter__)
        except StartInterrupted:
            app.progress("stopped")
            return
        try:
            _freeze_heap()
            if port_file:
                if app.metrics_port:
                    _write_atomic(port_file + ".metrics", str(app.metrics_port))
                _write_atomic(port_file, str(app.port))
            await signalled
            app.progress("stopping: draining in-flight calls")
        finally:
            await app.__aexit__()
    finally:
        signalled.cancel()
    app.progress("stopped")
