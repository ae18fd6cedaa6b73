"""TLS and mutual TLS from config (certificates made here with `cryptography`), bearer tokens mapped to tenants,
per-tenant rate limits; health stays open. Against Apps in this process: the gRPC server, its credentials and
interceptors are the real ones."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.inprocess import AppThread
from ..support.target import SERVING

pytestmark = pytest.mark.triton
TOKEN_ACME, TOKEN_BETA = "acme-token-0123456789abcdef", "beta-token-fedcba9876543210"


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False, dns: str = "") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:  # a certificate for this one name only (a Service's), not for the address it is reached at
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
    elif server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a rogue client."""
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        out[name] = root / name
        out[name].write_bytes(data)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("messplus test CA", ca_key, None, ca=True)
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name, issuer, server in (("server", (ca.subject, ca_key), True), ("client", (ca.subject, ca_key), False),
                                 ("rogue", None, False), ("svc", (ca.subject, ca_key), True)):
        key = ec.generate_private_key(ec.SECP256R1())
        dns = "messplus.default.svc" if name == "svc" else ""
        write(f"{name}.pem", _cert(name, key, issuer, server=server, dns=dns).public_bytes(serialization.Encoding.PEM))
        write(f"{name}-key.pem", pem_key(key))
    return out


def creds(pki: dict[str, Path], client: str | None = None) -> grpc.ChannelCredentials:
    chain = (pki[f"{client}-key.pem"].read_bytes(), pki[f"{client}.pem"].read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"].read_bytes(), private_key=chain[0],
                                        certificate_chain=chain[1])


def list_models(channel: grpc.Channel, metadata: tuple = ()) -> grpc.StatusCode:
    try:
        pb_grpc.RoutingServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5, metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def test_tls_and_mutual_tls_from_config(router_app: Callable[..., AppThread], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = router_app("tls", security={"tls_cert": str(pki["server.pem"]), "tls_key": str(pki["server-key.pem"])},
                 client_tls=creds(pki))
    with tls.channel() as ch:
        assert list_models(ch) == grpc.StatusCode.OK
    with grpc.insecure_channel(tls.address) as ch:
        assert list_models(ch) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    tls.stop()

    mtls = router_app("mtls", security={"tls_cert": str(pki["server.pem"]), "tls_key": str(pki["server-key.pem"]),
                                    "tls_client_ca": str(pki["ca.pem"])}, client_tls=creds(pki, "client"))
    assert mtls.health() == SERVING
    with mtls.channel() as ch:
        assert list_models(ch) == grpc.StatusCode.OK
    for who in (None, "rogue"):  # no client certificate, or one the CA did not sign
        with grpc.secure_channel(mtls.address, creds(pki, who)) as ch:
            assert list_models(ch) == grpc.StatusCode.UNAVAILABLE
    status = [sys.executable, "-m", "messplus.service.cli", "status", "--address", mtls.address, "--tenant", "acme",
              "--tls-ca", str(pki["ca.pem"])]
    client = ["--tls-cert", str(pki["client.pem"]), "--tls-key", str(pki["client-key.pem"])]
    shown = subprocess.run(status + client, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and shown.stdout.splitlines()[2].startswith("acme"), shown.stderr
    refused = subprocess.run(status, capture_output=True, text=True, timeout=60, check=False)  # no certificate
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr


def test_bearer_tokens_let_a_caller_act_only_for_its_own_tenants(router_app: Callable[..., AppThread],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# token tenants\n{TOKEN_ACME} acme\n")
    r = router_app(security={"tokens_file": str(tokens)}, env={"MESSPLUS_SECURITY_TOKENS": f"{TOKEN_BETA}=beta"})
    acme, beta = (("authorization", f"Bearer {TOKEN_ACME}"),), (("authorization", f"Bearer {TOKEN_BETA}"),)

    def code(call: Callable[..., object], request: object, metadata: tuple = ()) -> grpc.StatusCode:
        try:
            call(request, timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        route = pb.RouteRequest(tenant="acme", text="hello")
        assert code(stub.Route, route) == grpc.StatusCode.UNAUTHENTICATED
        assert code(stub.ListModels, pb.ListModelsRequest()) == grpc.StatusCode.UNAUTHENTICATED
        assert code(stub.Route, route, (("authorization", "Bearer " + TOKEN_ACME[:-1] + "x"),)) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert code(stub.Route, route, (("authorization", TOKEN_ACME),)) == grpc.StatusCode.UNAUTHENTICATED
        assert code(stub.Route, route, acme) == grpc.StatusCode.OK
        assert code(stub.Route, pb.RouteRequest(tenant="beta", text="hello"), acme) == grpc.StatusCode.PERMISSION_DENIED
        assert code(stub.SlaStatus, pb.SlaStatusRequest(tenant="beta"), acme) == grpc.StatusCode.PERMISSION_DENIED
        assert code(stub.SlaStatus, pb.SlaStatusRequest(tenant="acme"), acme) == grpc.StatusCode.OK
        rid_beta = stub.Route(pb.RouteRequest(tenant="beta", text="mine"), timeout=10, metadata=beta).request_id
        stolen = pb.FeedbackRequest(tenant="acme", request_id=rid_beta, satisfaction=0.0)
        assert code(stub.Feedback, stolen, acme) == grpc.StatusCode.NOT_FOUND
        assert code(stub.Feedback, pb.FeedbackRequest(tenant="beta", request_id=rid_beta, satisfaction=0.0), acme) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert code(stub.Feedback, pb.FeedbackRequest(tenant="beta", request_id=rid_beta, satisfaction=1.0), beta) \
            == grpc.StatusCode.OK
        assert stub.SlaStatus(pb.SlaStatusRequest(tenant="beta"), timeout=5, metadata=beta).queue == \
            pytest.approx(0.6 + 0.3 / 2 - 1.0)  # beta's own label moved beta's queue (default margin, no floor)
    assert r.health() == SERVING  # health needs no token

    # `messplus replay --grpc` drives a secured router with $MESSPLUS_TOKEN; without it, one line, no traceback
    from messplus.service.cli import main
    from messplus.service.demo.repository import DEFAULT_TRACE

    replay = ["replay", "--trace", str(DEFAULT_TRACE), "--limit", "4", "--alpha", "0.75", "--grpc", r.address,
              "--tenant", "acme", "--no-reference", "--no-plots", "--quiet", "--out", str(tmp_path / "replay")]
    with pytest.raises(SystemExit, match="messplus replay --grpc: UNAUTHENTICATED"):
        main(replay)
    monkeypatch.setenv("MESSPLUS_TOKEN", TOKEN_ACME)
    assert main(replay) == 0
    with r.channel() as ch:
        assert pb_grpc.RoutingServiceStub(ch).SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5,
                                                        metadata=acme).requests == 5  # 1 above, 4 replayed


def test_a_tenant_over_its_rate_limit_gets_resource_exhausted_and_others_do_not(
        router_app: Callable[..., AppThread], figures: dict) -> None:
    r = router_app(security={"rate_limit_rps": 5, "rate_limit_burst": 5})
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)

        def burst(tenant: str, n: int) -> Counter[str]:
            futures = [stub.SlaStatus.future(pb.SlaStatusRequest(tenant=tenant), timeout=10) for _ in range(n)]
            out: Counter[str] = Counter()
            for f in futures:
                out["OK" if f.exception() is None else f.exception().code().name] += 1
            return out

        began = time.monotonic()
        acme = burst("acme", 40)
        took = time.monotonic() - began
        beta = burst("beta", 5)
        time.sleep(1.0)
        later = burst("acme", 4)
    figures.update(acme_burst_of_40=dict(acme), beta=dict(beta), acme_after_1s=dict(later))
    assert acme["OK"] <= 5 + 5 * took + 1 and acme["RESOURCE_EXHAUSTED"] >= 40 - (5 + 5 * took + 1)
    assert set(acme) == {"OK", "RESOURCE_EXHAUSTED"}
    assert beta == {"OK": 5} and later == {"OK": 4}


def test_health_and_reflection_streams_without_a_token_cannot_lock_callers_out(
        router_app: Callable[..., AppThread]) -> None:
    """Health and reflection need no token, and their streams counted against gRPC's server-wide limit
    (server.max_inflight + 256): enough open health Watch streams from a caller without a token made every call
    refused, the liveness probe's health Check included. They are capped (guard.SIDE_STREAMS) below that."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from messplus.service.server.guard import SIDE_STREAMS

    r = router_app(server={"max_inflight": 2}, env={"MESSPLUS_SECURITY_TOKENS": f"{TOKEN_ACME}=acme"})
    acme = (("authorization", f"Bearer {TOKEN_ACME}"),)
    with r.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(2 + 256 + 4)]
        try:
            refused = 0
            for w in watches:  # each stream's first message, or its refusal
                try:
                    assert next(w).status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    assert "health and reflection streams" in str(err.details())
                    refused += 1
            assert refused == len(watches) - SIDE_STREAMS
            check = health.Check(health_pb2.HealthCheckRequest(service="messplus.liveness"), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING  # the liveness probe still answers
            assert pb_grpc.RoutingServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5, metadata=acme).models
        finally:
            for w in watches:
                w.cancel()


def test_calls_that_never_send_their_request_cannot_lock_the_liveness_probe_out(
        router_app: Callable[..., AppThread]) -> None:
    """A call whose request never comes runs no handler, so neither the guard nor the side-stream cap sees it,
    and no token is needed to open one. They counted against gRPC's server-wide maximum_concurrent_rpcs: a few
    hundred of them (max_inflight + 320) from one caller made every call refused, the liveness probe's included
    (a pod restarted by its probe). Now the bound is per connection: another connection (the kubelet's) answers."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from messplus.service.server.guard import SIDE_STREAMS

    r = router_app(server={"max_inflight": 2}, env={"MESSPLUS_SECURITY_TOKENS": f"{TOKEN_ACME}=acme"})
    acme = (("authorization", f"Bearer {TOKEN_ACME}"),)
    with r.channel() as hog:
        half_open = hog.stream_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)
        held = [half_open.future(iter([]), timeout=60) for _ in range(2 + SIDE_STREAMS + 256 + 20)]
        try:
            time.sleep(1.0)  # the server has taken every one it will take
            probe = grpc.insecure_channel(f"127.0.0.1:{r.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            with probe:  # a connection of its own, as a kubelet's probe
                check = health_pb2_grpc.HealthStub(probe).Check(
                    health_pb2.HealthCheckRequest(service="messplus.liveness"), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                assert pb_grpc.RoutingServiceStub(probe).ListModels(pb.ListModelsRequest(), timeout=5,
                                                                    metadata=acme).models
        finally:
            for f in held:
                f.cancel()


def test_a_tls_router_is_reached_under_its_certificate_s_name(tmp_path: Path) -> None:
    """A certificate that names the router's Service only, reached at 127.0.0.1 (`messplus status` on the pod):
    the hostname check failed with no way around it; --tls-server-name (client.channel's server_name) is it.
    A bare gRPC server with the health service: the name check is the channel's, not the router's."""
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from messplus.service.client import channel

    pki = make_pki(tmp_path / "pki")
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    creds_ = grpc.ssl_server_credentials([(pki["svc-key.pem"].read_bytes(), pki["svc.pem"].read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds_)
    server.start()
    try:
        ca = pki["ca.pem"].read_bytes()
        for name, want in (("", grpc.StatusCode.UNAVAILABLE), ("messplus.default.svc", grpc.StatusCode.OK)):
            with channel(f"127.0.0.1:{port}", ca=ca, server_name=name) as ch:
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    got = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    got = err.code()
            assert got == want, name
    finally:
        server.stop(0)
