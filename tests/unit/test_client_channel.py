"""The project's own client channels (service/client.py): the bearer token goes on every kind of call."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from messplus.service.client import channel

UNARY, STREAM = "/t.Echo/Unary", "/t.Echo/Stream"


def _auth(context: grpc.ServicerContext) -> bytes:
    return dict(context.invocation_metadata()).get("authorization", "<none>").encode()


class Echo(grpc.GenericRpcHandler):
    """Answers with the authorization header it received, as a unary reply or a one-message stream."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == UNARY:
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: _auth(ctx))
        if details.method == STREAM:
            return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter([_auth(ctx)]))
        return None


@pytest.fixture
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_the_token_goes_on_unary_and_streaming_calls(address: str) -> None:
    """Only unary calls carried it: a Generate through this channel went out without the token."""
    with channel(address, token="s3cret") as ch:
        assert ch.unary_unary(UNARY)(b"", timeout=5) == b"Bearer s3cret"
        assert list(ch.unary_stream(STREAM)(b"", timeout=5)) == [b"Bearer s3cret"]
    with channel(address) as ch:
        assert ch.unary_unary(UNARY)(b"", timeout=5) == b"<none>"


def test_a_token_never_travels_in_plaintext_off_this_machine() -> None:
    with pytest.raises(ValueError, match="refusing to send"):
        channel("10.1.2.3:50051", token="s3cret")
