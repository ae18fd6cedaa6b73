"""Who may call: TLS / mutual TLS for the gRPC port, bearer tokens mapped to tenants, per-tenant rate limits.

Tokens come from `security.tokens` ("TOKEN=t1,t2;TOKEN2=*", also settable as $MESSPLUS_SECURITY_TOKENS) and
from `security.tokens_file` (one "TOKEN t1,t2" per line). `*` grants every tenant. No tokens configured means
no authentication (the default, for a sidecar reached only over localhost). A presented token is compared with
every configured one by `hmac.compare_digest`, so the time taken does not tell which prefix matched.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..config import SecurityConfig
from ..errors import ConfigError, Overloaded, PermissionDenied, Unauthenticated, shown

ANY_TENANT = "*"


def server_credentials(sec: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port (None: plaintext); mutual TLS when a client CA is configured."""
    if not sec.tls:
        return None
    key = Path(sec.tls_key).expanduser().read_bytes()
    cert = Path(sec.tls_cert).expanduser().read_bytes()
    if not sec.tls_client_ca:
        return grpc.ssl_server_credentials([(key, cert)])
    ca = Path(sec.tls_client_ca).expanduser().read_bytes()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


@dataclass(frozen=True)
class Grant:
    """What one token may do: act for these tenants (or all of them)."""

    tenants: frozenset[str]

    def allows(self, tenant: str) -> bool:
        return ANY_TENANT in self.tenants or tenant in self.tenants


def _parse_entry(entry: str, key: str, sep: str) -> tuple[bytes, Grant]:
    # "TOKEN=tenants" splits at the last "=" (a base64 token ends in "="), "TOKEN tenants" at the first space
    token, _, tenants = entry.strip().rpartition(sep) if sep == "=" else entry.strip().partition(sep)
    names = frozenset(t.strip() for t in tenants.split(",") if t.strip())
    if not token.strip() or not names:
        raise ConfigError(key, "each token needs at least one tenant (form: TOKEN=tenant1,tenant2 or TOKEN=*)")
    if len(token.strip()) < 16:
        raise ConfigError(key, "a token must be at least 16 characters long")
    return token.strip().encode(), Grant(names)


def check_grants(tokens: list[tuple[bytes, Grant]], tenants: Collection[str]) -> None:
    """A token granting a tenant that is not configured is a mistake (a typo, or a token split wrongly): say so at
    start instead of answering that token PERMISSION_DENIED. The tenants are named, the tokens never."""
    unknown = sorted({t for _, g in tokens for t in g.tenants if t != ANY_TENANT} - set(tenants))
    if unknown:
        raise ConfigError("security.tokens", f"a token grants tenant(s) {unknown} that are not configured "
                          f"(tenants: {sorted(tenants)})")


def load_tokens(sec: SecurityConfig) -> list[tuple[bytes, Grant]]:
    """Every configured (token, grant), from `tokens` and `tokens_file`."""
    out = [_parse_entry(e, "security.tokens", "=") for e in sec.tokens.split(";") if e.strip()]
    if sec.tokens_file:
        for line in Path(sec.tokens_file).expanduser().read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(_parse_entry(line.replace("\t", " "), "security.tokens_file", " "))
    return out


class TokenAuth:
    """Bearer tokens -> grants: `grant` raises Unauthenticated, `authorize` PermissionDenied."""

    def __init__(self, tokens: list[tuple[bytes, Grant]]) -> None:
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def grant(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Grant | None:
        """The grant of the call's bearer token; None when auth is off. Raises Unauthenticated."""
        if not self._tokens:
            return None
        value = next((v for k, v in metadata or () if k == "authorization"), None)
        if value is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        raw = value.encode() if isinstance(value, str) else value
        scheme, _, presented = raw.partition(b" ")
        found: Grant | None = None
        for token, grant in self._tokens:  # compare with every token: no early exit on a match
            if hmac.compare_digest(token, presented.strip()) and found is None:
                found = grant
        if scheme.lower() != b"bearer" or found is None:
            raise Unauthenticated("invalid bearer token")
        return found

    @staticmethod
    def authorize(grant: Grant | None, tenant: str) -> None:
        if grant is not None and tenant and not grant.allows(tenant):
            raise PermissionDenied(f"tenant: this token may not act for tenant {shown(tenant)}")


class RateLimiter:
    """One token bucket per tenant: `rate` requests per second sustained, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float = 0.0, clock: Callable[[], float] | None = None) -> None:
        self.rate = rate
        self.burst = burst or max(1.0, rate)
        self._clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, tenant: str) -> None:
        """Spend one request of `tenant`'s budget, or raise Overloaded."""
        if self.rate <= 0:
            return
        now = self._clock()
        with self._lock:
            level, last = self._buckets.get(tenant, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[tenant] = (level, now)
                wait = (1.0 - level) / self.rate
                raise Overloaded(f"tenant {tenant!r} is over its rate limit of {self.rate:g} requests/s; "
                                 f"retry in {wait:.2f} s")
            self._buckets[tenant] = (level - 1.0, now)
