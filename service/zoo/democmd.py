"""`messplus demo-triton`: the demo zoo's Triton on its own, for several routers to share (replicas on one
machine, a router under a debugger), with the configuration that points a router at it.

`messplus serve` with no `triton.url` starts this same Triton inside the router (and ends it with the router);
once a router is given `triton.url`, its zoo must be configured too (`[[zoo.models]]`, each with its price), so
this command writes that part of the configuration: the `[triton]` url and the demo zoo's models with the price
list the embedded default uses. It runs in the foreground until SIGINT or SIGTERM, or until Triton ends."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..config import ModelConfig


def zoo_toml(url: str, models: tuple[ModelConfig, ...]) -> str:
    """The configuration that points a router at `url` serving `models` (TOML; append [state], [[tenants]])."""
    lines = ["# the demo zoo's Triton (messplus demo-triton): append [state] and [[tenants]] as needed",
             "[triton]", f'url = "{url}"', ""]
    for m in models:
        lines += ["[[zoo.models]]", f'name = "{m.name}"', f'triton_model = "{m.triton_model}"',
                  f"cost_per_request = {m.cost_per_request!r}", f"cost_per_input_token = {m.cost_per_input_token!r}",
                  ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .embedded import StartInterrupted, start_embedded_triton

    def progress(line: str) -> None:
        print(f"messplus demo-triton: {line}", file=sys.stderr, flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server, models = start_embedded_triton(Path(args.state_dir), progress, stop, grpc_port=args.port)
    except StartInterrupted:
        progress("stopped during start-up")
        return 130
    try:
        text = zoo_toml(server.grpc_url, models)
        if args.zoo_toml:
            out = Path(args.zoo_toml)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(out)  # whole or absent: a script may wait for it to appear
            progress(f"wrote {out}")
        else:
            print(text, flush=True)
        progress(f"serving {len(models)} models on {server.grpc_url} (its watchdog's pid, and tritonserver's "
                 f"process group: {server.pid}); Ctrl-C or SIGTERM stops it")
        while not stop.wait(1.0):
            if not server.running():
                progress(f"tritonserver ended (exit {server.exit_code()}); its log: {server.log_path}")
                return 1
        return 0
    finally:
        server.stop()
        progress("stopped")


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("demo-triton", help="run the demo zoo's Triton alone, for several routers to share",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("--port", type=int, default=None, help="Triton's gRPC port on 127.0.0.1 (default: a free one)")
    cmd.add_argument("--state-dir", default="var/demo-triton",
                     help="where its model repository and log go (default: var/demo-triton)")
    cmd.add_argument("--zoo-toml", help="write the router's [triton] and [[zoo.models]] here (default: stdout)")
    cmd.set_defaults(func=run)
