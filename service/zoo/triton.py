"""The model zoo as the router sees it: text generation on Triton over gRPC (`tritonclient.grpc.aio`).

Models follow the I/O convention of Triton's vLLM backend: `text_input` (BYTES), optional `stream` (BOOL)
and `sampling_parameters` (BYTES, JSON), output `text_output` (BYTES). Decoupled models (vLLM and the demo
zoo) are called with the bidirectional streaming RPC, one stream per generation; others with plain `infer`.
Each model's config (decoupled or not, which optional inputs it declares) is read once and cached, and read
again after the model fails a call (a model reloaded in place with another config is called once more as it is
now); inputs a model does not declare are not sent, so `sampling` is dropped for a model without `sampling_parameters`.
`sampling` is a dict (sent as JSON) or a JSON string passed through unchanged.

Every Triton call has a deadline. Failures raise one of:

    ZooError                      base; `.model` names the model ("" for the server)
    +-- ModelUnavailable          not loaded, unknown, not ready, or Triton unreachable: route elsewhere
    |   +-- TritonUnreachable     Triton itself cannot be reached (refused, unresolvable, not Triton): no model
    |                             of it can serve; `.kind` and `.reason` say why, the message names the address
    +-- ModelTimeout              no complete answer within the deadline: retry elsewhere or give up
    +-- ModelFailed               the model answered with an error (bad sampling parameters, backend
                                  failure); `.message` is Triton's text: retrying the same call will not help
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

_UNAVAILABLE_HINTS = ("unknown model", "is not found", "not ready", "no available version", "unavailable")
_UNAVAILABLE_CODES = ("UNAVAILABLE", "NOT_FOUND")


RECONNECT_BACKOFF_MS = (250, 1000)  # the first and the longest wait between attempts to reach Triton again


def channel_args() -> list[tuple[str, int]]:
    """The gRPC channel options of a Triton client: tritonclient's own (message sizes, keepalive) and a reconnect
    backoff of at most RECONNECT_BACKOFF_MS[1] (gRPC's minimum connect timeout, 20 s, stays: it is also how long
    one connection attempt may take). gRPC's default grows to 120 s while nothing listens, and a
    readiness call between attempts fails at once: a Triton back after a 30 s outage was seen 11.7 s late, and
    Route and Generate refused calls all that time."""
    keep = grpcclient.KeepAliveOptions()
    first, longest = RECONNECT_BACKOFF_MS
    return [("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keep.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(keep.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", first), ("grpc.max_reconnect_backoff_ms", longest)]


class ZooError(Exception):
    """Base of the errors a Triton call raises; `model` is the Triton model name."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model
        self.message = message


class ModelUnavailable(ZooError):
    """The model cannot take requests now (unloaded, unknown, not ready) or Triton is unreachable."""

    def __init__(self, model: str, detail: str = "") -> None:
        text = f"model {model!r} is unavailable on Triton" + (f": {detail}" if detail else "")
        super().__init__(model, text)


class TritonUnreachable(ModelUnavailable):
    """Triton cannot be reached at all; the message is `Triton at HOST:PORT unreachable (reason)`."""

    def __init__(self, model: str, url: str, kind: str, reason: str) -> None:
        ZooError.__init__(self, model, f"Triton at {url} unreachable ({reason})")
        self.url, self.kind, self.reason = url, kind, reason


class ModelTimeout(ZooError):
    """The model did not finish within the deadline."""

    def __init__(self, model: str, timeout_s: float) -> None:
        super().__init__(model, f"model {model!r} did not answer within {timeout_s:.3g} s")
        self.timeout_s = timeout_s


class ModelFailed(ZooError):
    """The model returned an error for this request."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(model, f"model {model!r} failed: {message}")
        self.message = message


@dataclass(frozen=True)
class _ModelInfo:
    decoupled: bool
    inputs: frozenset[str]


def _error_code(exc: BaseException) -> str:
    """The gRPC status name of an error ("" when it has none): 'UNAVAILABLE', 'DEADLINE_EXCEEDED', ..."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return str(exc.code().name)
    if isinstance(exc, InferenceServerException) and exc.status():
        return str(exc.status()).rsplit(".", 1)[-1]
    return ""


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return str(exc.details())
    if isinstance(exc, InferenceServerException):
        return str(exc.message())
    return str(exc)


def unreachable(exc: BaseException, timeout_s: float) -> tuple[str, str] | None:
    """(kind, reason) when `exc`, the error of a call to Triton, says Triton itself cannot be reached: kind is
    "refused", "dns", "timeout" or "unreachable"; None for an error of Triton's own (a model's, a request's)."""
    code, text = _error_code(exc), _error_text(exc)
    low = text.lower()
    if code == "DEADLINE_EXCEEDED":
        return "timeout", f"no answer within {timeout_s:.3g} s"
    if "connection refused" in low:
        return "refused", "connection refused"
    if "resolving" in low or "dns" in low or "name or service not known" in low or "domain name not found" in low:
        return "dns", f"cannot resolve its name: {text}"
    # a dying (or not yet listening) server resets the connection or closes it mid-handshake: one plain phrase each
    if code == "UNAVAILABLE" and "connection reset" in low:
        return "unreachable", "connection reset by peer"
    if code == "UNAVAILABLE" and "socket closed" in low:
        return "unreachable", "connection closed by the server"
    if code == "UNAVAILABLE" and "failed to connect" in low:
        return "unreachable", text
    if code in ("UNIMPLEMENTED", "UNKNOWN", "INTERNAL") and "http2" in low:
        return "unreachable", f"not a Triton gRPC endpoint: {code}: {text}"
    return None


def classify(model: str, exc: BaseException, timeout_s: float, url: str = "") -> ZooError:
    """Map a tritonclient/gRPC error to the zoo's error tree."""
    code, text = _error_code(exc), _error_text(exc)
    if code == "DEADLINE_EXCEEDED":
        return ModelTimeout(model, timeout_s)
    cause = unreachable(exc, timeout_s)
    if cause is not None:
        return TritonUnreachable(model, url, *cause)
    if code in _UNAVAILABLE_CODES or any(hint in text.lower() for hint in _UNAVAILABLE_HINTS):
        return ModelUnavailable(model, text)
    return ModelFailed(model, text or f"{type(exc).__name__} {code}".strip())


# how much longer than its caller's deadline a response stream is read (_pump): callers' deadlines of 20-80 ms
# against answers of a few ms cancelled streams as their last responses came, and Triton 2.51 then leaked a
# model instance now and then (a stop waited out Triton's exit timeout: 10.1 s instead of 2.6 s)
STREAM_GRACE_S = 1.0


class TritonZoo:
    """Client of one Triton server for the router. One gRPC channel; call close() (or use `async with`)."""

    def __init__(self, url: str, *, control_timeout_s: float = 2.0, close_timeout_s: float = 5.0) -> None:
        self.url = url
        self.control_timeout_s = control_timeout_s
        self.close_timeout_s = close_timeout_s
        self._client = grpcaio.InferenceServerClient(url, channel_args=channel_args())
        self._models: dict[str, _ModelInfo] = {}
        self._streams: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Let open streams end (up to close_timeout_s; see _pump), then close the channel."""
        if self._streams:
            await asyncio.wait(set(self._streams), timeout=self.close_timeout_s)
        await self._client.close()

    @property
    def open_streams(self) -> int:
        """Response streams still being read to their end (see _pump)."""
        return len(self._streams)

    async def __aenter__(self) -> TritonZoo:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def server_ready(self, timeout_s: float | None = None) -> bool:
        """True when Triton answers ready (all its loaded models ready) within the timeout."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s or self.control_timeout_s))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def live(self, timeout_s: float | None = None) -> bool:
        """Triton's answer to its liveness call; raises the call's error (tritonclient's) when there is none."""
        return bool(await self._client.is_server_live(client_timeout=timeout_s or self.control_timeout_s))

    async def repository_index(self, timeout_s: float | None = None) -> dict[str, tuple[str, str]]:
        """{model: (state, reason)} of every model in Triton's repository, e.g. ("UNAVAILABLE", "unloaded")."""
        reply = await self._client.get_model_repository_index(client_timeout=timeout_s or self.control_timeout_s)
        return {m.name: (m.state, m.reason) for m in reply.models}

    async def ready_models(self, names: Iterable[str], timeout_s: float | None = None) -> dict[str, bool]:
        """Readiness per model, asked concurrently; all False when Triton cannot be reached."""
        names = list(names)
        timeout = timeout_s or self.control_timeout_s
        answers = await asyncio.gather(
            *(self._client.is_model_ready(n, client_timeout=timeout) for n in names), return_exceptions=True
        )
        if any(_error_code(a) in ("UNAVAILABLE", "DEADLINE_EXCEEDED") for a in answers if isinstance(a, Exception)):
            return dict.fromkeys(names, False)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # cancellation and friends pass through
        return {n: a is True for n, a in zip(names, answers)}

    async def complete(
        self, triton_model: str, prompt: str, *, sampling: dict | str | None = None, timeout_s: float = 30.0
    ) -> str:
        """The whole answer of `triton_model` to `prompt` (one response, no streaming)."""
        chunks = self.generate(triton_model, prompt, sampling=sampling, timeout_s=timeout_s, stream=False)
        return "".join([c async for c in chunks])

    async def generate(
        self,
        triton_model: str,
        prompt: str,
        *,
        sampling: dict | str | None = None,
        timeout_s: float = 30.0,
        stream: bool = True,
    ) -> AsyncIterator[str]:
        """Text chunks of the answer as the model produces them; the whole call ends within timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for attempt in (1, 2):
            info = await self._info(triton_model, max(min(self.control_timeout_s, deadline - loop.time()), 0.001))
            inputs = self._inputs(info, prompt, sampling, stream)
            remaining = max(deadline - loop.time(), 0.001)
            answered = False
            try:
                if info.decoupled:
                    async for chunk in self._stream(triton_model, inputs, remaining):
                        answered = True
                        yield chunk
                else:
                    result = await self._client.infer(triton_model, inputs, client_timeout=remaining)
                    answered = True
                    yield _text(result)
                return
            except (InferenceServerException, grpc.RpcError) as exc:
                error = classify(triton_model, exc, timeout_s, self.url)
            if isinstance(error, ModelUnavailable | ModelFailed):
                self._models.pop(triton_model, None)  # it may have been (re)loaded with another config
            # a model reloaded in place with another config (now decoupled, other inputs) fails the call made for
            # the old one: read its config again and, if it changed, call it once more as it is now
            if (attempt == 1 and not answered and isinstance(error, ModelFailed) and deadline - loop.time() > 0.01
                    and await self._reloaded(triton_model, info, deadline - loop.time())):
                continue
            raise error from None

    async def _stream(self, model: str, inputs: list, timeout_s: float) -> AsyncIterator[str]:
        """The stream's chunks within `timeout_s` (else ModelTimeout); the stream itself is read STREAM_GRACE_S
        longer (_pump)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        queue: asyncio.Queue[tuple[str, BaseException | None] | None] = asyncio.Queue()
        pump = loop.create_task(self._pump(model, inputs, timeout_s + STREAM_GRACE_S, queue))
        self._streams.add(pump)
        pump.add_done_callback(self._streams.discard)
        while True:
            try:  # not wait_for: on Python 3.11 it can swallow a cancel that comes as a chunk does
                async with asyncio.timeout_at(deadline):  # around the wait only, never across a yield
                    item = await queue.get()
            except TimeoutError:
                raise ModelTimeout(model, timeout_s) from None
            if item is None:  # the pump always ends with None, by the stream's deadline
                break
            text, error = item
            if error is not None:
                raise error
            yield text

    async def _pump(self, model: str, inputs: list, timeout_s: float, queue: asyncio.Queue) -> None:
        """Read one response stream to its end, in its own task, whatever the consumer does.

        A consumer that stops early (break, cancellation, an error) never cancels the stream: Triton 2.51 leaks
        the model instance when a client cancels a stream while its last responses are in flight (the model
        then never finishes unloading and shutdown waits out --exit-timeout-secs). The deadline bounds it: the
        consumer's plus STREAM_GRACE_S, so an answer that ends just after a caller's deadline is read to its end
        rather than cancelled in that window, and a long one nobody waits for is still cancelled soon after.
        """

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": model, "inputs": inputs}

        failed = False
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async for result, error in self._client.stream_infer(requests(), stream_timeout=timeout_s):
                if failed:
                    continue
                failed = error is not None
                text = "" if failed else _text(result, decoder)
                if failed or text:
                    queue.put_nowait((text, error))
            if not failed and (rest := decoder.decode(b"", final=True)):  # a character cut off at the end
                queue.put_nowait((rest, None))
        except Exception as exc:  # delivered to the consumer, which classifies it
            if not failed:
                queue.put_nowait(("", exc))
        finally:
            queue.put_nowait(None)

    async def _reloaded(self, model: str, old: _ModelInfo, timeout_s: float) -> bool:
        """Whether the model's config now differs from `old` (False when it cannot be read)."""
        try:
            return await self._info(model, min(self.control_timeout_s, timeout_s)) != old
        except ZooError:
            return False

    async def _info(self, model: str, timeout_s: float) -> _ModelInfo:
        info = self._models.get(model)
        if info is None:
            try:
                reply = await self._client.get_model_config(model, client_timeout=timeout_s)
            except (InferenceServerException, grpc.RpcError) as exc:
                error = classify(model, exc, timeout_s, self.url)
                if isinstance(error, ModelTimeout):  # a control call unanswered: Triton hangs, not the model
                    raise TritonUnreachable(model, self.url, "timeout", f"no answer within {timeout_s:.3g} s") from None
                raise (ModelUnavailable(model, error.message) if isinstance(error, ModelFailed) else error) from None
            config = reply.config
            info = _ModelInfo(config.model_transaction_policy.decoupled, frozenset(i.name for i in config.input))
            self._models[model] = info
        return info

    @staticmethod
    def _inputs(
        info: _ModelInfo, prompt: str, sampling: dict | str | None, stream: bool
    ) -> list[grpcclient.InferInput]:
        values: list[tuple[str, str, np.ndarray]] = [
            ("text_input", "BYTES", np.array([prompt.encode("utf-8")], dtype=np.object_))
        ]
        if "stream" in info.inputs:
            values.append(("stream", "BOOL", np.array([stream and info.decoupled], dtype=bool)))
        if sampling is not None and "sampling_parameters" in info.inputs:
            encoded = (sampling if isinstance(sampling, str) else json.dumps(sampling)).encode("utf-8")
            values.append(("sampling_parameters", "BYTES", np.array([encoded], dtype=np.object_)))
        inputs = []
        for name, dtype, array in values:
            tensor = grpcclient.InferInput(name, [1], dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs


def _text(result: grpcclient.InferResult, decoder: codecs.IncrementalDecoder | None = None) -> str:
    """The text of one response ("" for an empty final response). A stream's responses go through one
    `decoder`: a character whose UTF-8 bytes a backend split across two responses is decoded whole."""
    array = result.as_numpy("text_output")
    if array is None:
        return ""
    decode = decoder.decode if decoder is not None else (lambda b: b.decode("utf-8", errors="replace"))
    return "".join(decode(v) if isinstance(v, bytes) else str(v) for v in array.reshape(-1))
