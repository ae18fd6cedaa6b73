"""Configuration: one TOML file, overridable by environment variables, validated in one place.

Sections and keys (all optional; the embedded default is the demo zoo on a local Triton)::

    [server]     listen, max_message_bytes, max_prompt_chars, grace_s, drain_delay_s, max_inflight,
                 metrics_listen, log_format
    [security]   tls_cert, tls_key, tls_client_ca, tokens, tokens_file, rate_limit_rps, rate_limit_burst
    [state]      dir, synchronous, snapshot_every_labels, backend, url, password_file, buffer_records,
                 retention_days, poll_s, record_wait_s
    [predictor]  onnx, max_tokens, threads, prior_var, batch_max, batch_delay_ms, batch_gather, providers,
                 sub_batch, tokenizer
    [triton]     url ("" = start the embedded Triton with the demo zoo; "none" = no Triton: a Route-only router),
                 timeout_s, ready_poll_s
    [routing]    policy (a name registered in routing/registry.py: "messplus", or "mess-paper", MESS+ as published)
    [zoo]        cost_unit, cost_ema; [[zoo.models]] name, triton_model, cost_per_request,
                 cost_per_input_token, cost_per_output_token, prior_accuracy
    [[tenants]]  name, alpha, V, c, explore_models, explore_budget, optimism, margin,
                 reserve, confidence, debt_gain, floor_window, caution, seed

Environment: `MESSPLUS_<SECTION>_<KEY>` overrides a scalar key, e.g. MESSPLUS_SERVER_LISTEN=0.0.0.0:50051,
MESSPLUS_TRITON_URL=triton:8001, MESSPLUS_STATE_DIR=/var/lib/messplus. A bad value fails at start-up with a
ConfigError that names the key. Not overrides: MESSPLUS_CONFIG (the file) and MESSPLUS_TOKEN (`messplus status`'s
bearer token); the service links Kubernetes injects for a Service whose name starts with "messplus"
(MESSPLUS_SERVICE_HOST, MESSPLUS_PORT_50051_TCP_ADDR, ...) are ignored with one warning. Any other unknown
MESSPLUS_ variable stops start-up with its name (a misspelt override must not pass unnoticed).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import checks
from .errors import ConfigError

ENV_PREFIX = "MESSPLUS_"
# MESSPLUS_ variables that are not config overrides: the file's path, and `messplus status`'s bearer token
ENV_NOT_CONFIG = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "TOKEN"})
# what Kubernetes injects into every pod for each Service of its namespace (enableServiceLinks, on by default):
# a Service named "messplus" (or "messplus-metrics") gives MESSPLUS_SERVICE_HOST, MESSPLUS_PORT_50051_TCP_ADDR, ...
K8S_SERVICE_LINK = re.compile(r"MESSPLUS(?:_[A-Z0-9_]+?)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
                              r"|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)")
log = logging.getLogger("messplus.config")
ROUTE_ONLY = "none"  # triton.url of a router without Triton
SECRET_KEYS = frozenset({"tokens", "password"})  # configuration values never repeated in an error message


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    max_message_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 200_000
    grace_s: float = 10.0
    max_inflight: int = 512  # RoutingService calls at once; more get RESOURCE_EXHAUSTED (health is not counted)
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off
    drain_delay_s: float = 0.5  # on SIGTERM: NOT_SERVING this long before new calls are refused
    log_format: str = "text"  # "text" or "json" (one JSON object per line, with the request id)


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    tls_cert: str = ""  # PEM server certificate (chain); with tls_key: the gRPC port speaks TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mutual TLS)
    # "TOKEN=tenant1,tenant2;TOKEN2=*" (better: tokens_file or $MESSPLUS_SECURITY_TOKENS); never logged
    tokens: str = field(default="", repr=False)
    tokens_file: str = ""  # one "TOKEN tenant1,tenant2" per line ('*' = every tenant; '#' starts a comment)
    rate_limit_rps: float = 0.0  # per tenant, sustained requests per second; 0 = no limit
    rate_limit_burst: float = 0.0  # bucket size; 0 = max(1, rate_limit_rps)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    dir: str = "var"  # the SQLite file (backend "sqlite"), the exported encoder, the demo repository
    synchronous: str = "FULL"  # SQLite's sync mode
    snapshot_every_labels: int = 500
    backend: str = "sqlite"  # "sqlite": one router; "postgres": replicas share one state (docs/SCALING.md)
    url: str = ""  # postgres: "postgresql://USER@HOST:5432/DB" (no password: password_file or $MESSPLUS_STATE_PASSWORD)
    password_file: str = ""  # postgres: a file holding the password (a mounted Secret)
    password: str = field(default="", repr=False)  # postgres: from $MESSPLUS_STATE_PASSWORD; never logged
    buffer_records: int = 10_000  # postgres: routed requests kept while the database is down; then UNAVAILABLE
    retention_days: float = 30.0  # request records kept this long (later feedback: NOT_FOUND)
    poll_s: float = 0.5  # postgres: the label log is read at least this often (NOTIFY wakes it sooner)
    record_wait_s: float = 2.0  # postgres: how long Feedback looks for a record another replica is committing

    def db_password(self) -> str:
        """The database password: the file's first line, else `password` (the environment)."""
        if self.password_file:
            lines = Path(self.password_file).expanduser().read_text(encoding="utf-8").splitlines()
            return lines[0].strip() if lines else ""
        return self.password


@dataclass(frozen=True, kw_only=True)
class PredictorConfig:
    onnx: str = ""
    max_tokens: int = 256
    threads: int = 0
    prior_var: float = 1.0
    # Micro-batching of concurrent Route/Generate calls (server/batcher.py: MicroBatcher). 64: 64 concurrent
    # callers share one predictor batch (the p99 target compares Route with the predictor at the batch it runs
    # at). 20 ms: how long the predictor waits for the next of a batch's callers to come back; with 5 ms, on the
    # loaded 2-core box, 64 closed-loop callers stayed split in two alternating batches of ~32. A lone caller
    # never waits. 0.1: while they keep coming back, the predictor may idle up to a tenth of its last batch's
    # time to take them all, so that none waits for two batches (on the CPU, 64 callers' round trips spread over
    # 10-25 ms; on a GPU, whose batches take milliseconds, the wait stays 20 ms from the first; 0: that rule
    # everywhere). Measured in docs/BENCHMARKS.md (`make bench`, `python -m bench.batching_ab`).
    batch_max: int = 64
    batch_delay_ms: float = 20.0
    batch_gather: float = 0.1
    providers: str = ""
    sub_batch: int = 0  # a batch runs sorted by length in ONNX calls of this many prompts; 0: 8 on CPU, 64 on CUDA
    tokenizer: str = ""  # the model's tokenizer.json; "" = the weights package's (a host with only the exported model)


@dataclass(frozen=True, kw_only=True)
class TritonConfig:
    url: str = ""  # HOST:PORT; "" = the embedded Triton with the demo zoo; ROUTE_ONLY = no Triton at all
    timeout_s: float = 30.0
    ready_poll_s: float = 2.0


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    policy: str = "messplus"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    triton_model: str
    cost_per_request: float = 0.0
    cost_per_input_token: float = 0.0
    cost_per_output_token: float = 0.0
    prior_accuracy: float = 0.5


@dataclass(frozen=True, kw_only=True)
class ZooConfig:
    cost_unit: str = "USD per request"
    cost_ema: float = 0.05
    models: tuple[ModelConfig, ...] = ()


def _knob(default: Any, help: str, ok: Callable[[Any], bool], problem: str) -> Any:
    """A tenant knob: its default, its one-line help (config docs, `messplus replay --<knob>`, the README) and
    its check, declared once here."""
    return field(default=default, metadata={"help": help, "ok": ok, "problem": problem})


@dataclass(frozen=True, kw_only=True)
class TenantConfig:
    """One SLA: the long-run mean satisfaction of the tenant's requests must stay >= alpha.

    The knobs' defaults are the ones docs/ROUTING.md measured across every shared trace; MESS+ as published
    (the `mess-paper` policy) is V ~ 0 on raw costs, c = 0.5, explore_models = 0, optimism = 0, margin = 0,
    reserve = 0, confidence = 0, debt_gain = 0, floor_window = 0 (explore_budget does not apply when every model
    is explored).
    """

    name: str
    alpha: float
    V: float = _knob(0.15, "cost weight, per unit of the tenant's own mean cost per request",
                     lambda v: 0 < v <= 1e6, "must be in (0, 1000000]")
    c: float = _knob(0.2, "exploration: P(explore at request t) = min(1, c / t^(1/4)), 4x while stuck",
                     lambda v: v >= 0, "must be >= 0")
    explore_models: int = _knob(2, "0: exploration calls every model; N: the exploit choice + N-1 it learns most from",
                                lambda v: v >= 0, "must be >= 0")
    explore_budget: float = _knob(0.1, "exploration may also afford models up to this fraction of the spend, "
                                       "beyond cost neighbours",
                                  lambda v: 0 <= v <= 1, "must be in [0, 1]")
    optimism: float = _knob(1.0, "decisions use the upper 1-sigma bound of each model's predicted satisfaction",
                            lambda v: v >= 0, "must be >= 0")
    margin: float = _knob(0.3, "the n-th label is held to alpha + margin / (2 sqrt(n))",
                          lambda v: 0 <= v <= 1, "must be in [0, 1]")
    reserve: float = _knob(-1.0, "satisfaction the queue may bank below 0 (-1: unlimited; 0: the MESS+ floor)",
                           lambda v: v >= 0 or v == -1, "must be >= 0, or -1 for unlimited")
    confidence: float = _knob(2.0, "sigmas of the unlabelled requests' estimated satisfaction decisions also cover",
                              lambda v: 0 <= v <= 10, "must be in [0, 10]")
    debt_gain: float = _knob(3.0, "the queue weighs this much more past half the margin's surplus and the "
                                  "confidence allowance (0: linear)",
                             lambda v: 0 <= v <= 100, "must be in [0, 100]")
    floor_window: int = _knob(256, "satisfaction's price is at least what the latest N requests' predictions say "
                                   "reaches the target (0: off)", lambda v: 0 <= v <= 4096, "must be in [0, 4096]")
    caution: int = _knob(0, "for its first N labels the tenant is held one standard error above its target, "
                            "favouring dearer models where no mix reaches that (0: off)",
                         lambda v: 0 <= v <= 1_000_000, "must be in [0, 1000000]")
    seed: int = 0


TENANT_KNOBS = tuple(f for f in fields(TenantConfig) if "help" in f.metadata)  # the routing policy's knobs


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    state: StateConfig = field(default_factory=StateConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    tenants: tuple[TenantConfig, ...] = ()

    @property
    def embedded_triton(self) -> bool:
        """True when messplus starts its own Triton with the demo zoo (no `triton.url` configured)."""
        return not self.triton.url

    @property
    def route_only(self) -> bool:
        """True for `triton.url = "none"`: no Triton at all. Route and Feedback serve (the caller calls the routed
        model itself), every zoo model counts as available, Generate answers UNIMPLEMENTED."""
        return self.triton.url == ROUTE_ONLY

    @property
    def state_dir(self) -> Path:
        return Path(self.state.dir).expanduser().resolve()

    def tenant(self, name: str) -> TenantConfig | None:
        return next((t for t in self.tenants if t.name == name), None)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML or environment value to the annotated scalar type, or fail naming the key."""
    try:
        if typ == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        if typ == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        shown = f"a {type(value).__name__}" if key.rsplit(".", 1)[-1] in SECRET_KEYS else repr(value)
        raise ConfigError(key, f"expected {typ}, got {shown}") from None
    raise ConfigError(key, f"unsupported type {typ}")


def _build(cls: Any, prefix: str, raw: Mapping[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix, f"expected a table, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, f in known.items():
        if name in raw:
            kwargs[name] = _coerce(f"{prefix}.{name}", raw[name], f.type)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(prefix, str(exc)) from None


def _env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    sections = {"server": ServerConfig, "security": SecurityConfig, "state": StateConfig, "predictor": PredictorConfig,
                "triton": TritonConfig, "routing": RoutingConfig, "zoo": ZooConfig}
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    if isinstance(out.get("state"), dict) and "password" in out["state"]:  # a file is no place for it
        raise ConfigError("state.password", "is not read from the configuration file: use state.password_file "
                                            "(a mounted secret) or $MESSPLUS_STATE_PASSWORD")
    links = []
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_CONFIG:
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or key not in {f.name for f in fields(sections[section])}:
            if K8S_SERVICE_LINK.fullmatch(var):  # not ours: a pod must still start beside a Service named messplus
                links.append(var)
                continue
            raise ConfigError(var, "unknown environment override (form: MESSPLUS_<SECTION>_<KEY>)")
        if key == "models":
            raise ConfigError(var, "zoo models are configured in the TOML file only")
        out.setdefault(section, {})[key] = value
    if links:
        log.warning("ignoring %s: Kubernetes service links, not config overrides (a pod spec with "
                    "enableServiceLinks: false has none)", ", ".join(sorted(links)))
    return out


def _models(raw: Any) -> tuple[ModelConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("zoo.models", "expected an array of tables ([[zoo.models]])")
    models = tuple(_build(ModelConfig, f"zoo.models[{i}]", m) for i, m in enumerate(raw))
    return models


def _tenants(raw: Any) -> tuple[TenantConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("tenants", "expected an array of tables ([[tenants]])")
    return tuple(_build(TenantConfig, f"tenants[{i}]", t) for i, t in enumerate(raw))


def from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build and validate a Config from parsed TOML, applying environment overrides."""
    merged = _env_overrides(dict(raw), os.environ if env is None else env)
    known = {"server", "security", "state", "predictor", "triton", "routing", "zoo", "tenants"}
    for key in merged:
        if key not in known:
            raise ConfigError(key, f"unknown section (known: {', '.join(sorted(known))})")
    if not isinstance(merged.get("zoo", {}), Mapping):
        raise ConfigError("zoo", f"expected a table, got {type(merged['zoo']).__name__}")
    zoo_raw = dict(merged.get("zoo", {}))
    models = _models(zoo_raw.pop("models", []))
    cfg = Config(
        server=_build(ServerConfig, "server", merged.get("server", {})),
        security=_build(SecurityConfig, "security", merged.get("security", {})),
        state=_build(StateConfig, "state", merged.get("state", {})),
        predictor=_build(PredictorConfig, "predictor", merged.get("predictor", {})),
        triton=_build(TritonConfig, "triton", merged.get("triton", {})),
        routing=_build(RoutingConfig, "routing", merged.get("routing", {})),
        zoo=ZooConfig(**{**vars(_build(ZooConfig, "zoo", zoo_raw)), "models": models}),
        tenants=_tenants(merged.get("tenants", [])),
    )
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file at `path` (or $MESSPLUS_CONFIG); no file means the embedded default."""
    environ = os.environ if env is None else env
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(raw, environ)


def validate(cfg: Config) -> None:
    """Every semantic check of the configuration, each naming its key (service/checks.py)."""
    checks.validate(cfg, TENANT_KNOBS)


DEFAULT_TENANTS = (TenantConfig(name="default", alpha=0.7),)


def with_defaults(cfg: Config, demo_models: tuple[ModelConfig, ...]) -> Config:
    """Fill what the embedded default provides: the demo zoo's models and a `default` tenant."""
    zoo = cfg.zoo if cfg.zoo.models else ZooConfig(
        cost_unit=cfg.zoo.cost_unit, cost_ema=cfg.zoo.cost_ema, models=demo_models)
    tenants = cfg.tenants or DEFAULT_TENANTS
    out = replace(cfg, zoo=zoo, tenants=tenants)
    validate(out)
    return out
