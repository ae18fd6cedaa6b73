"""How many Feedbacks a fleet commits per second when its PostgreSQL is a round trip away.

    python -m bench.pg_rtt [--delay-ms 0 1 2] [--src DIR]

Every write transaction of a replica holds the fleet's one log lock (docs/SCALING.md), so the statements a
Feedback sends, times the round trip to the database, bound what the whole fleet commits. On this machine the
database is on loopback; here each router's connections go through a TCP proxy (a process of its own) that holds
every chunk `delay` ms in each direction, as a database in another zone would. Two routers (the `Router` and
`PostgresStore` the service runs, in this process, each with its own writer thread and connections), 32 client
threads each, Feedback (one label) on requests routed beforehand; per delay, the round trip a `SELECT 1` takes
through the proxy and the Feedbacks committed per second over the window. `--src DIR`: the messplus source tree
to import (another checkout, for a side-by-side run of two versions). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def proxy_main(listen: int, target: int, delay_s: float) -> None:
    """Forward 127.0.0.1:listen to 127.0.0.1:target, each chunk `delay_s` late in each direction, in order."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        task = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((time.monotonic() + delay_s, data))
        finally:
            queue.put_nowait((0.0, b""))
            await task

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        for w in (client_w, server_w):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(url: str, delay_ms: float, window_s: float, clients: int, routed: int) -> dict[str, float]:
    import numpy as np
    import psycopg

    from messplus.service.config import ModelConfig, TenantConfig
    from messplus.service.routing.heads import Heads
    from messplus.service.routing.router import Router
    from messplus.service.routing.types import RouteItem
    from messplus.service.state.postgres import PostgresStore

    target = int(url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    proxy = subprocess.Popen([sys.executable, "-m", "bench.pg_rtt", "--proxy", str(port), str(target),
                              str(delay_ms / 1e3)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        via = url.replace(f":{target}/", f":{port}/")
        with psycopg.connect(via, autocommit=True) as conn:
            conn.execute("SELECT 1")
            began = time.perf_counter()
            for _ in range(50):
                conn.execute("SELECT 1").fetchone()
            rtt_ms = (time.perf_counter() - began) / 50 * 1e3
        models = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
                  ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
        tenant = TenantConfig(name="acme", alpha=0.8, c=0.0)
        routers = [Router(models, [tenant], Heads([m.name for m in models], 8), PostgresStore(via), snapshot_every=10**9)
                   for _ in range(2)]
        rng = np.random.default_rng(0)
        ids: list[list[str]] = [[], []]
        for k, r in enumerate(routers):
            futures = []
            for _ in range(routed):
                emb = rng.standard_normal((1, 8)).astype(np.float32)
                (d,) = r.route([RouteItem(tenant="acme")], emb / np.linalg.norm(emb))
                futures.append(r.record(d.decision, d.embedding))  # type: ignore[union-attr]
                ids[k].append(d.decision.request_id)  # type: ignore[union-attr]
            for f in futures:
                f.result(120)
        done = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def client(r: Router, todo: list[str]) -> None:
            while todo and not stop.is_set():
                rid = todo.pop()
                r.feedback("acme", rid, float(random.random() < 0.8), []).result(60)
                with lock:
                    done[0] += 1

        threads = [threading.Thread(target=client, args=(routers[k], ids[k])) for k in range(2) for _ in range(clients)]
        began = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(window_s)
        with lock:
            n, took = done[0], time.monotonic() - began
        stop.set()
        for t in threads:
            t.join(120)
        left = min(len(x) for x in ids)
        for r in routers:
            r.store.close()
        return {"delay_ms": delay_ms, "rtt_ms": round(rtt_ms, 3), "feedback_per_s": round(n / took, 1),
                "feedbacks": n, "window_s": round(took, 2), "unused_ids": left}
    finally:
        proxy.terminate()
        proxy.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--window-s", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=32, help="client threads per router")
    ap.add_argument("--routed", type=int, default=6000, help="requests routed per router before the windows")
    ap.add_argument("--src", help="the messplus source tree to import (default: the installed one)")
    ap.add_argument("--proxy", nargs=3, metavar=("LISTEN", "TARGET", "DELAY_S"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.proxy:
        proxy_main(int(args.proxy[0]), int(args.proxy[1]), float(args.proxy[2]))
        return 0
    if args.src:
        import importlib.util

        src = Path(args.src).resolve()
        finder = next(m for n, m in sys.modules.items() if n.startswith("__editable___messplus"))
        finder.MAPPING.update({n: p.replace(str(ROOT), str(src)) for n, p in  # type: ignore[attr-defined]
                               finder.MAPPING.items()})  # type: ignore[attr-defined]
        assert str(src) in str(importlib.util.find_spec("messplus.service").origin)  # type: ignore[union-attr]
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PostgresServer

    server = PostgresServer(fsync=True).start()
    out = []
    try:
        for i, d in enumerate(args.delay_ms):
            url = server.url.rsplit("/", 1)[0] + f"/rtt{i}"
            import psycopg

            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE rtt{i}")  # type: ignore[arg-type]
            out.append(measure(url, d, args.window_s, args.clients, args.routed))
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    finally:
        server.close()
    import messplus.service

    print(json.dumps({"src": str(Path(messplus.service.__file__).resolve().parent), "runs": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
