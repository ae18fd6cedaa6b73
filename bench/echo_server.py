"""The gRPC ceiling of this host: a trivial RoutingService served the way `messplus serve` serves the real one.

A grpc.aio server with the router's error mapping and health service (not its guard, the side-stream cap or its
maximum_concurrent_rpcs: the ceiling is gRPC's own); Route answers at once with a
reply shaped like the real one (five model predictions), Generate streams a route, three text chunks and done.
Nothing is computed, so its throughput under the load generator is the most any Python gRPC servicer reaches
on this machine with this client.

    python -m bench.echo_server --port-file PATH [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from messplus.service.server.status import ErrorInterceptor
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

MODELS = ("mistral-7b-chat", "mixtral-8x7b-chat", "Yi-34B-Chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview")


def _reply(request: pb.RouteRequest | pb.GenerateRequest, t: int) -> pb.RouteReply:
    preds = [pb.ModelPrediction(model=m, p_hat=0.5, cost=0.2 * (k + 1), cost_raw=1e-4 * (k + 1), available=True)
             for k, m in enumerate(MODELS)]
    return pb.RouteReply(request_id=request.request_id or f"echo-{t}", model=MODELS[0], predictions=preds,
                         alpha=0.7, tenant_request_index=t)


class EchoServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self) -> None:
        self.t = 0

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteReply:
        self.t += 1
        return _reply(request, self.t)

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateReply]:
        self.t += 1
        yield pb.GenerateReply(route=_reply(request, self.t))
        for chunk in ("echo ", "of the ", "prompt"):
            yield pb.GenerateReply(text=chunk)
        yield pb.GenerateReply(done=pb.GenerateDone(served_model=MODELS[0], cost=0.2, cost_raw=1e-4))


async def serve(listen: str, port_file: str) -> None:
    size = 4 * 1024 * 1024
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], maximum_concurrent_rpcs=512,
                             options=[("grpc.max_receive_message_length", size),
                                      ("grpc.max_send_message_length", size)])
    pb_grpc.add_RoutingServiceServicer_to_server(EchoServicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--port-file", required=True)
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.port_file))


if __name__ == "__main__":
    main()
