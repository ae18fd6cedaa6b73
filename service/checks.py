"""The semantic checks of a configuration (config.validate): each failure is a ConfigError naming its key."""

from __future__ import annotations

import re
from dataclasses import Field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config, SecurityConfig, StateConfig, TenantConfig

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _check_listen(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    _check(bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) < 65536, key,
           f"expected HOST:PORT, got {value!r}")


def validate(cfg: Config, knobs: tuple[Field[Any], ...]) -> None:
    """Every semantic check of the configuration, each naming its key; `knobs`: the tenant's (TENANT_KNOBS)."""
    _check_listen("server.listen", cfg.server.listen)
    if cfg.server.metrics_listen:
        _check_listen("server.metrics_listen", cfg.server.metrics_listen)
    _check(cfg.server.max_message_bytes >= 1024, "server.max_message_bytes", "must be >= 1024")
    _check(cfg.server.max_prompt_chars >= 1, "server.max_prompt_chars", "must be >= 1")
    _check(cfg.server.grace_s >= 0, "server.grace_s", "must be >= 0")
    _check(cfg.server.max_inflight >= 1, "server.max_inflight", "must be >= 1")
    _check(cfg.server.drain_delay_s >= 0, "server.drain_delay_s", "must be >= 0")
    _check(cfg.server.log_format in ("text", "json"), "server.log_format", "must be text or json")
    _validate_security(cfg.security)
    _check(cfg.state.synchronous.upper() in ("FULL", "NORMAL", "EXTRA"), "state.synchronous",
           "must be FULL, EXTRA or NORMAL")
    _check(cfg.state.snapshot_every_labels >= 1, "state.snapshot_every_labels", "must be >= 1")
    _validate_state(cfg.state)
    _check(16 <= cfg.predictor.max_tokens <= 512, "predictor.max_tokens", "must be in [16, 512]")
    _check(cfg.predictor.threads >= 0, "predictor.threads", "must be >= 0 (0: all cores)")
    _check(cfg.predictor.prior_var > 0, "predictor.prior_var", "must be > 0")
    _check(cfg.predictor.batch_max >= 1, "predictor.batch_max", "must be >= 1")
    _check(cfg.predictor.batch_delay_ms >= 0, "predictor.batch_delay_ms", "must be >= 0")
    _check(0 <= cfg.predictor.batch_gather <= 1, "predictor.batch_gather", "must be in [0, 1]")
    _check(cfg.predictor.sub_batch >= 0, "predictor.sub_batch", "must be >= 0 (0: the provider's default)")
    _check(not cfg.predictor.tokenizer or Path(cfg.predictor.tokenizer).expanduser().is_file(), "predictor.tokenizer",
           f"file not found: {cfg.predictor.tokenizer}")
    _check(cfg.triton.timeout_s > 0, "triton.timeout_s", "must be > 0")
    _check(cfg.triton.ready_poll_s > 0, "triton.ready_poll_s", "must be > 0")
    if cfg.triton.url and not cfg.route_only:
        _check(":" in cfg.triton.url, "triton.url",
               f"expected HOST:PORT (or \"none\": a Route-only router), got {cfg.triton.url!r}")
    _check(0 < cfg.zoo.cost_ema <= 1, "zoo.cost_ema", "must be in (0, 1]")
    _validate_models(cfg)
    _validate_tenants(cfg, knobs)


def _validate_state(st: StateConfig) -> None:
    _check(st.backend in ("sqlite", "postgres"), "state.backend", f"must be sqlite or postgres, got {st.backend!r}")
    if st.backend == "postgres":
        _check(st.url.startswith(("postgresql://", "postgres://")), "state.url",
               "postgres needs a URL like postgresql://USER@HOST:5432/DB")
    try:
        parts = urlsplit(st.url)
        password = parts.password
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ConfigError("state.url", f"not a URL: {exc}") from None
    in_query = any(k.strip().lower() == "password" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    _check(password is None and not in_query, "state.url",
           "must not hold the password: use state.password_file or $MESSPLUS_STATE_PASSWORD")
    _check(not st.password_file or Path(st.password_file).expanduser().is_file(), "state.password_file",
           f"file not found: {st.password_file}")
    _check(not st.password_file or bool(st.db_password()), "state.password_file",
           f"the file's first line is empty: {st.password_file}")
    _check(st.buffer_records >= 1, "state.buffer_records", "must be >= 1")
    _check(st.retention_days > 0, "state.retention_days", "must be > 0")
    _check(st.poll_s > 0, "state.poll_s", "must be > 0")
    _check(st.record_wait_s >= 0, "state.record_wait_s", "must be >= 0")


def _validate_security(sec: SecurityConfig) -> None:
    _check(bool(sec.tls_cert) == bool(sec.tls_key), "security.tls_key", "tls_cert and tls_key go together")
    _check(not sec.tls_client_ca or sec.tls, "security.tls_client_ca", "mutual TLS needs tls_cert and tls_key")
    for key in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
        path = getattr(sec, key)
        _check(not path or Path(path).expanduser().is_file(), f"security.{key}", f"file not found: {path}")
    _check(sec.rate_limit_rps >= 0, "security.rate_limit_rps", "must be >= 0")
    _check(sec.rate_limit_burst == 0 or sec.rate_limit_burst >= 1, "security.rate_limit_burst",
           "must be 0 (max(1, rate_limit_rps)) or at least 1: a bucket smaller than one request never admits one")


def _validate_models(cfg: Config) -> None:
    if cfg.embedded_triton and not cfg.zoo.models:
        return  # the demo zoo is filled in at start-up
    _check(len(cfg.zoo.models) >= 1, "zoo.models",
           "at least one model is needed with your own Triton or Route-only (triton.url set): add a [[zoo.models]] "
           "table per model (name, triton_model, prices); only the embedded demo Triton (triton.url empty) brings "
           "its own zoo")
    seen: set[str] = set()
    for i, m in enumerate(cfg.zoo.models):
        key = f"zoo.models[{i}]"
        _check(bool(NAME.match(m.name)), f"{key}.name", f"invalid model name {m.name!r}")
        _check(m.name not in seen, f"{key}.name", f"duplicate model name {m.name!r}")
        seen.add(m.name)
        _check(bool(m.triton_model), f"{key}.triton_model", "must not be empty")
        for part in ("cost_per_request", "cost_per_input_token", "cost_per_output_token"):
            _check(getattr(m, part) >= 0, f"{key}.{part}", "must be >= 0")
        _check(m.cost_per_request + m.cost_per_input_token + m.cost_per_output_token > 0, f"{key}.cost_per_request",
               "a model needs a positive cost (per request or per token)")
        _check(0 < m.prior_accuracy < 1, f"{key}.prior_accuracy", "must be in (0, 1)")


def _validate_tenants(cfg: Config, knobs: tuple[Field[Any], ...]) -> None:
    seen: set[str] = set()
    for i, t in enumerate(cfg.tenants):
        key = f"tenants[{i}]"
        _check(bool(NAME.match(t.name)), f"{key}.name", f"invalid tenant name {t.name!r}")
        _check(t.name not in seen, f"{key}.name", f"duplicate tenant {t.name!r}")
        seen.add(t.name)
        validate_tenant(t, knobs, f"{key}.")


def validate_tenant(t: TenantConfig, knobs: tuple[Field[Any], ...], prefix: str = "") -> None:
    """One tenant's SLA and knobs (also `messplus replay`'s, whose knobs are flags); keys start with `prefix`."""
    _check(0 < t.alpha < 1, f"{prefix}alpha", f"must be in (0, 1), got {t.alpha}")
    for knob in knobs:
        _check(knob.metadata["ok"](getattr(t, knob.name)), f"{prefix}{knob.name}", knob.metadata["problem"])
    _check(t.seed >= 0, f"{prefix}seed", "must be >= 0")
    _check(not (t.caution and not t.floor_window), f"{prefix}caution",
           "needs the price floor: set floor_window > 0, or caution = 0")
