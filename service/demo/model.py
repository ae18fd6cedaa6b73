"""Triton Python-backend model that replays the recorded outcomes of one LLM from a routing trace.

`repository.build_demo_repository` copies this file into `<model>/1/model.py` of a Triton model repository
and writes the outcomes of one trace model into `<model>/outcomes.json`. It runs inside Triton's Python stub,
so it depends on nothing but the standard library, NumPy and `triton_python_backend_utils`.

I/O follows the Triton vLLM backend: `text_input` (BYTES [1]), optional `stream` (BOOL [1]) and
`sampling_parameters` (BYTES [1], a JSON object), output `text_output` (BYTES [-1]); the model is decoupled.
With `stream` true the answer comes as up to 3 delta chunks (fewer for a short answer) whose concatenation is
the full answer; otherwise as one response. The last response carries the FINAL flag. The answer names the
recorded outcome:

    [replay of <trace model> on <prompt_id>] recorded outcome: correct | incorrect | unlabelled

A prompt missing from the trace gets a deterministic "no recorded outcome" answer, never an error. Bad
`sampling_parameters` (not JSON, not an object, `max_tokens` not a positive integer) get an error response.
`max_tokens` truncates the answer to that many whitespace-separated words. Config parameter `latency_ms`
adds artificial latency per request, spread over the chunks; `execute` is a coroutine, so requests that wait
overlap inside one instance instead of queueing behind each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

_MAX_CHUNKS = 3


class RequestError(ValueError):
    """A request the model refuses; it becomes a Triton error response."""


def prompt_key(prompt: bytes) -> str:
    """The key outcomes are stored under: SHA-256 of the prompt's UTF-8 bytes, in hex."""
    return hashlib.sha256(prompt).hexdigest()


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _outcome_word(label: float | None) -> str:
    if label is None:
        return "unlabelled"
    return "correct" if label >= 0.5 else "incorrect"


def _max_tokens(raw: bytes | None) -> int | None:
    """Parse sampling_parameters; only max_tokens is used, anything else is accepted and ignored."""
    if raw is None or raw.strip() == b"":
        return None
    try:
        params = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"sampling_parameters is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise RequestError("sampling_parameters must be a JSON object")
    value = params.get("max_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"sampling_parameters.max_tokens must be a positive integer, got {value!r}")
    return value


def _chunks(text: str, stream: bool) -> list[str]:
    """Split text at word boundaries into up to _MAX_CHUNKS pieces that concatenate back to it."""
    words = re.findall(r"\s*\S+\s*", text) or [text]
    count = min(_MAX_CHUNKS, len(words)) if stream else 1
    step = -(-len(words) // count)
    return ["".join(words[i : i + step]) for i in range(0, len(words), step)]


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    return values[0] if values.size else None


class TritonPythonModel:
    """One trace model; answers from a dict sha256(prompt) -> (prompt_id, label, cost)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.trace_model = _parameter(config, "trace_model", args["model_name"])
        self.latency_s = float(_parameter(config, "latency_ms", "0")) / 1000.0
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        path = Path(args["model_repository"]) / _parameter(config, "outcomes_file", "outcomes.json")
        data = json.loads(path.read_text(encoding="utf-8"))
        self.outcomes: dict[str, list] = data["outcomes"]

    def answer(self, prompt: bytes) -> str:
        key = prompt_key(prompt)
        found = self.outcomes.get(key)
        if found is None:
            return f"[replay of {self.trace_model}] no recorded outcome for this prompt (sha256 {key[:16]})"
        prompt_id, label = found[0], found[1]
        return f"[replay of {self.trace_model} on {prompt_id}] recorded outcome: {_outcome_word(label)}"

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._serve(request) for request in requests))
        return None

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            await self._respond(request, sender, final)
        except Exception as exc:  # never let one request take the model down or leave its stream open
            message = exc.args[0] if isinstance(exc, RequestError) else f"replay failed: {type(exc).__name__}: {exc}"
            try:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=final)
            except Exception:  # noqa: BLE001 - the request is gone (cancelled, or already final)
                pass

    async def _respond(self, request, sender, final: int) -> None:
        pieces = self._plan(request)
        for index, piece in enumerate(pieces):
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s / len(pieces))
            last = index == len(pieces) - 1
            if not last and request.is_cancelled():
                sender.send(flags=final)
                return
            output = pb_utils.Tensor("text_output", np.array([piece.encode("utf-8")], dtype=np.object_))
            sender.send(pb_utils.InferenceResponse(output_tensors=[output]), flags=final if last else 0)

    def _plan(self, request) -> list[str]:
        prompt = _scalar(request, "text_input")
        if prompt is None:
            raise RequestError("text_input is required")
        stream = _scalar(request, "stream")
        max_tokens = _max_tokens(_scalar(request, "sampling_parameters"))
        text = self.answer(bytes(prompt))
        if max_tokens is not None:
            text = "".join(re.findall(r"\s*\S+\s*", text)[:max_tokens]).rstrip()
        return _chunks(text, bool(stream) and self.decoupled)

    def finalize(self) -> None:
        self.outcomes = {}
