"""`messplus status`: a running router's Triton and each tenant's SLA, one line each, for a person at a terminal.

The lines come from the router's own RPCs (ListModels for Triton, SlaStatus per tenant), so they are what any
client sees. Which router and which tenants: `--address` and `--tenant` (repeatable), else the configuration
`messplus serve` reads (`--config`, `$MESSPLUS_CONFIG`, or the embedded default): its `server.listen` (a wildcard
host means this machine) and all its `[[tenants]]`. A bearer token, when the router wants one, comes from
`$MESSPLUS_TOKEN` (never from the command line); a TLS router is verified with `--tls-ca`, else its own
`security.tls_cert`; a router asking for client certificates (mutual TLS) gets `--tls-cert` and `--tls-key`.

Exit status: 0 when every line was read, 1 when the router or a tenant's status could not be, 2 for a bad
configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from . import config as config_mod
from .client import channel
from .config import ROUTE_ONLY

HEADER = ("tenant", "alpha", "satisfaction", "SLA", "queue", "requests", "labelled", "explored", "mean cost",
          "mean cost (unit)")


def add_command(sub: Any) -> None:
    p = sub.add_parser("status", help="print a running router's Triton and each tenant's SLA line",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="the router's HOST:PORT (default: server.listen of the configuration)")
    p.add_argument("--tenant", action="append", default=[],
                   help="a tenant to show; repeat for more (default: every tenant of the configuration)")
    p.add_argument("--config", help="the router's TOML config (default: $MESSPLUS_CONFIG, else the embedded default)")
    p.add_argument("--tls-ca", help="PEM CA that signed the router's certificate (default: security.tls_cert)")
    p.add_argument("--tls-cert", help="PEM client certificate, for a router with security.tls_client_ca")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", default="",
                   help="the name the router's certificate carries, when it is not the address's host (e.g. its "
                        "Service's DNS name while the address is 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per call (default: 5)")
    p.set_defaults(func=run)


def local_address(listen: str) -> str:
    """The address to reach a router listening on `listen` from this machine."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def triton_line(reply: pb.ListModelsReply) -> str:
    t = reply.triton
    ready = sum(m.available for m in reply.models)
    if t.state == ROUTE_ONLY:
        return f"no Triton (a Route-only router); {ready}/{len(reply.models)} zoo models available"
    if not t.address:
        return f"Triton: not reported by this router; {ready}/{len(reply.models)} zoo models available"
    if t.state == "up":
        return f"Triton at {t.address}: up, {ready}/{len(reply.models)} zoo models ready"
    return f"{t.problem or f'Triton at {t.address}: {t.state}'} [{t.state}]"


def sla_row(st: pb.SlaStatusReply, unit: str) -> tuple[str, ...]:
    labelled = st.labelled
    verdict = "met" if st.sla_met else "AT RISK"
    if not labelled:
        verdict = "no labels"
    explored = f"{st.exploration_steps / st.requests:.1%}" if st.requests else "-"
    return (st.tenant, f"{st.alpha:g}", f"{st.satisfaction:.3f}" if labelled else "-", verdict, f"{st.queue:.3f}",
            str(st.requests), str(labelled), explored, f"{st.mean_cost:.4f}", f"{st.mean_cost_raw:.3g} {unit}".strip())


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def report(address: str, tenants: Sequence[str], *, ca: bytes | None = None, client: tuple[bytes, bytes] | None = None,
           token: str = "", timeout_s: float = 5.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
           server_name: str = "") -> int:
    """Print the Triton line and one SLA line per tenant; return the exit status. `client`: (key, certificate)."""
    try:
        ch = channel(address, ca=ca, client=client, token=token, server_name=server_name)
    except ValueError as exc:  # a token that would travel in plaintext off this machine
        print(f"messplus status: {exc} (the CA: --tls-ca, or a config with security.tls_cert)", file=err)
        return 2
    status = 0
    with ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        try:
            models = stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"messplus status: router at {address}: {exc.code().name}: {exc.details()}", file=err)
            return 1
        print(f"router at {address}; {triton_line(models)}", file=out)
        rows = [HEADER]
        for tenant in tenants:
            try:
                st = stub.SlaStatus(pb.SlaStatusRequest(tenant=tenant), timeout=timeout_s)
            except grpc.RpcError as exc:
                print(f"messplus status: tenant {tenant!r}: {exc.code().name}: {exc.details()}", file=err)
                status = 1
                continue
            rows.append(sla_row(st, models.cost_unit))
        if len(rows) > 1:
            print("\n".join(table(rows)), file=out)
    return status


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    address = args.address or local_address(cfg.server.listen)
    if address.endswith(":0"):
        print("messplus status: the configuration listens on port 0 (any free port): give --address", file=sys.stderr)
        return 2
    tenants = args.tenant or [t.name for t in (cfg.tenants or config_mod.DEFAULT_TENANTS)]
    if bool(args.tls_cert) != bool(args.tls_key):
        print("messplus status: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        ca_path = args.tls_ca or cfg.security.tls_cert
        ca = Path(ca_path).expanduser().read_bytes() if ca_path else None
        client = ((Path(args.tls_key).expanduser().read_bytes(), Path(args.tls_cert).expanduser().read_bytes())
                  if args.tls_cert else None)
    except OSError as exc:
        print(f"messplus status: {exc}", file=sys.stderr)
        return 2
    if client and not ca:
        print("messplus status: a client certificate needs TLS: give --tls-ca", file=sys.stderr)
        return 2
    if args.tls_server_name and not ca:
        print("messplus status: --tls-server-name needs TLS: give --tls-ca", file=sys.stderr)
        return 2
    return report(address, tenants, ca=ca, client=client, token=os.environ.get("MESSPLUS_TOKEN", ""),
                  timeout_s=args.timeout, server_name=args.tls_server_name)
