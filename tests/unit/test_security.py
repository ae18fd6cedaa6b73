"""Token parsing, constant-time lookup semantics, the per-tenant token bucket, and the security config checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from messplus.service import config
from messplus.service.errors import ConfigError, Overloaded, PermissionDenied, Unauthenticated
from messplus.service.server.security import Grant, RateLimiter, TokenAuth, load_tokens

A, B = "a" * 20, "b" * 20


def test_tokens_come_from_the_inline_value_and_the_file(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# comment\n{B} beta, gamma  # trailing\n\n")
    tokens = load_tokens(config.SecurityConfig(tokens=f"{A}=*", tokens_file=str(f)))
    assert tokens == [(A.encode(), Grant(frozenset({"*"}))), (B.encode(), Grant(frozenset({"beta", "gamma"})))]


@pytest.mark.parametrize("bad", ["short=acme", f"{A}=", f"{A}"])
def test_a_malformed_token_entry_names_the_key(bad: str) -> None:
    with pytest.raises(ConfigError, match="security.tokens"):
        load_tokens(config.SecurityConfig(tokens=bad))


def test_token_auth_maps_tokens_to_tenants() -> None:
    auth = TokenAuth(load_tokens(config.SecurityConfig(tokens=f"{A}=acme;{B}=*")))
    grant = auth.grant((("authorization", f"Bearer {A}"),))
    auth.authorize(grant, "acme")
    with pytest.raises(PermissionDenied, match="tenant"):
        auth.authorize(grant, "beta")
    auth.authorize(auth.grant((("authorization", f"bearer {B}"),)), "anyone")
    for metadata in ((), (("authorization", A),), (("authorization", f"Bearer {A}x"),), (("x", f"Bearer {A}"),)):
        with pytest.raises(Unauthenticated):
            auth.grant(metadata)
    assert TokenAuth([]).grant(()) is None  # no tokens configured: authentication is off


def test_rate_limiter_is_a_token_bucket_per_tenant() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("acme")
    with pytest.raises(Overloaded, match="rate limit"):
        limiter.take("acme")
    limiter.take("beta")  # another tenant has its own bucket
    now[0] = 0.5  # half a second refills one request at 2/s
    limiter.take("acme")
    with pytest.raises(Overloaded):
        limiter.take("acme")
    RateLimiter(0.0).take("acme")  # 0: no limit


def test_security_config_is_checked_at_start_up(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="security.tls_key"):
        config.from_mapping({"security": {"tls_cert": str(cert)}}, env={})
    with pytest.raises(ConfigError, match="security.tls_client_ca"):
        config.from_mapping({"security": {"tls_client_ca": str(cert)}}, env={})
    with pytest.raises(ConfigError, match="security.tokens_file"):
        config.from_mapping({"security": {"tokens_file": str(tmp_path / "missing")}}, env={})
    with pytest.raises(ConfigError, match="server.log_format"):
        config.from_mapping({"server": {"log_format": "xml"}}, env={})
    with pytest.raises(ConfigError, match="rate_limit_burst.*: must be 0"):  # it could never admit one
        config.from_mapping({"security": {"rate_limit_rps": 5, "rate_limit_burst": 0.5}}, env={})
    env = {"MESSPLUS_SECURITY_TOKENS": f"{A}=acme", "MESSPLUS_SECURITY_RATE_LIMIT_RPS": "5"}
    cfg = config.from_mapping({}, env=env)
    assert cfg.security.tokens == f"{A}=acme" and cfg.security.rate_limit_rps == 5.0


def test_a_base64_token_keeps_its_trailing_equals_signs() -> None:
    """"TOKEN=tenants" split at the first "=": a token ending in "==" became its head, granting tenant "=acme"."""
    b64 = "c2VjcmV0LXRva2VuLWJ5dGVzLTAxMjM0NTY3=="
    assert load_tokens(config.SecurityConfig(tokens=f"{b64}=acme,beta")) == \
        [(b64.encode(), Grant(frozenset({"acme", "beta"})))]


def test_a_grant_of_a_tenant_that_is_not_configured_stops_the_start(tmp_path: Path, capsys) -> None:
    from messplus.service.cli import main
    from messplus.service.server.security import check_grants

    tokens = load_tokens(config.SecurityConfig(tokens=f"{A}=acme,acmee;{B}=*"))
    with pytest.raises(ConfigError, match=r"grants tenant\(s\) \['acmee'\] that are not configured") as err:
        check_grants(tokens, ["acme", "beta"])
    assert A not in str(err.value)  # the token itself is never named
    check_grants(tokens[1:], ["acme"])  # "*" grants whatever is configured
    cfg = tmp_path / "messplus.toml"
    cfg.write_text(f'[security]\ntokens = "{A}=acmee"\n[[tenants]]\nname = "acme"\nalpha = 0.7\n'
                   '[triton]\nurl = "none"\n[[zoo.models]]\nname = "m"\ntriton_model = "m"\ncost_per_request = 1.0\n')
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert "acmee" in capsys.readouterr().err


def test_a_token_of_the_wrong_type_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ConfigError, match="security.tokens'?: expected str, got a list") as err:
        config.from_mapping({"security": {"tokens": [f"{A}=acme"]}}, env={})
    assert A not in str(err.value)
    assert A not in repr(config.from_mapping({"security": {"tokens": f"{A}=acme"}}, env={}))


def test_messplus_status_never_sends_a_token_in_plaintext_off_this_machine() -> None:
    import io

    from messplus.service.client import loopback
    from messplus.service.statuscmd import report

    assert all(loopback(a) for a in ("127.0.0.1:50051", "localhost:1", "[::1]:50051", "127.8.9.1:2"))
    assert not any(loopback(a) for a in ("10.1.2.3:50051", "router.internal:50051", "[2001:db8::1]:1", ":50051"))
    out, err = io.StringIO(), io.StringIO()
    assert report("10.1.2.3:50051", ["acme"], token=A, out=out, err=err, timeout_s=0.1) == 2
    assert "refusing to send $MESSPLUS_TOKEN in plaintext to 10.1.2.3:50051" in err.getvalue() and not out.getvalue()
    assert A not in err.getvalue()
