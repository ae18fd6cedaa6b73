"""A minimal messplus client: route a prompt, generate through Triton, send feedback, read the SLA.

    python examples/python_client.py [127.0.0.1:50051]
"""

import sys

import grpc

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
with grpc.insecure_channel(address) as channel:
    router = pb_grpc.RoutingServiceStub(channel)

    # 1. Route only: which model should answer? (You then call Triton yourself.)
    route = router.Route(pb.RouteRequest(tenant="default", text="Which gas do plants absorb from the air?"),
                         timeout=5)
    print(f"Route    -> {route.model} (exploration={route.exploration}, queue={route.queue:.3f})")
    print("           p_hat: " + ", ".join(f"{p.model}={p.p_hat:.2f}" for p in route.predictions))

    # 2. Generate: route, call the chosen model on Triton, stream the answer back.
    request_id = ""
    for event in router.Generate(pb.GenerateRequest(tenant="default", text="Write a haiku about routers."),
                                 timeout=30):
        kind = event.WhichOneof("event")
        if kind == "route":
            request_id = event.route.request_id
            print(f"Generate -> routed to {event.route.model}")
        elif kind == "text":
            print(f"           text: {event.text!r}")
        elif kind == "answer":  # exploration: another model's answer, to be labelled too
            print(f"           also: {event.answer.model}: {event.answer.text!r}")
        elif kind == "done":
            print(f"           done: served by {event.done.served_model}, cost {event.done.cost_raw:.6f}")

    # 3. Feedback: how satisfied was the user with the served answer? (0..1; idempotent per request)
    reply = router.Feedback(pb.FeedbackRequest(tenant="default", request_id=request_id, satisfaction=1.0), timeout=5)
    print(f"Feedback -> applied={reply.labels_applied} queue={reply.queue:.3f}")

    # 4. The SLA as the router sees it.
    status = router.SlaStatus(pb.SlaStatusRequest(tenant="default"), timeout=5)
    print(f"SlaStatus-> alpha={status.alpha} satisfaction={status.satisfaction:.3f} requests={status.requests} "
          f"mean_cost={status.mean_cost_raw:.6f} {', '.join(f'{m.model}:{m.served}' for m in status.models)}")
