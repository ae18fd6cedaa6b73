"""The demo zoo on a real Triton server, called through TritonZoo."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from messplus.service.demo.repository import (
    DEFAULT_MODELS,
    DEFAULT_TRACE,
    TRACES_DIR,
    TraceGrader,
    build_demo_repository,
    lookup_label,
    triton_model_name,
)
from messplus.service.zoo.embedded import TritonServer, TritonStartError, free_port
from messplus.service.zoo.triton import ModelFailed, ModelTimeout, ModelUnavailable, TritonUnreachable, TritonZoo

T = TypeVar("T")


def run(body: Callable[[TritonZoo], Awaitable[T]], url: str) -> T:
    """Run body(zoo) on a fresh event loop with a TritonZoo on url."""

    async def main() -> T:
        async with TritonZoo(url) as zoo:
            return await body(zoo)

    return asyncio.run(main())


def expected_word(label: float | None) -> str:
    return "unlabelled" if label is None else ("correct" if label >= 0.5 else "incorrect")


def trace_rows(ids: set[str]) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with open(DEFAULT_TRACE, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["prompt_id"] in ids]


# A spread of items: each benchmark, a prompt with non-ASCII text, one where four models lack a label.
SAMPLE_IDS = {
    "arc-challenge.test.1", "winogrande.dev.1", "mbpp.dev.3", "arc-challenge.test.370", "arc-challenge.val.137"
}


# -- the repository builder and the grader (no server) --------------------------------------------------------


def test_default_zoo_spans_cheap_to_expensive(tmp_path: Path) -> None:
    models = build_demo_repository(tmp_path)
    assert [m.trace_name for m in models] == list(DEFAULT_MODELS)
    assert [m.triton_name for m in models] == [
        "mistral-7b-chat", "mixtral-8x7b-chat", "Yi-34B-Chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"
    ]
    assert models[-1].mean_cost / models[0].mean_cost > 50
    assert len({round(m.accuracy, 3) for m in models}) == 5
    for m in models:
        assert (tmp_path / m.triton_name / "1" / "model.py").is_file()
        assert (tmp_path / m.triton_name / "outcomes.json").stat().st_size < 1_000_000


def test_other_traces_default_to_all_their_models(tmp_path: Path) -> None:
    models = build_demo_repository(tmp_path, TRACES_DIR / "routellm_gsm8k.csv")
    assert [m.triton_name for m in models] == ["Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]
    with pytest.raises(ValueError, match="no columns"):
        build_demo_repository(tmp_path, TRACES_DIR / "routellm_gsm8k.csv", models=["claude-v1"])


def test_model_names_are_sanitised_and_distinct() -> None:
    assert triton_model_name("a b/c:d") == "c-d"
    assert triton_model_name("org/x", taken={"x"}) == "org-x"
    assert triton_model_name("org/x", taken={"x", "org-x"}) == "org-x-2"


def test_grader_treats_empty_labels_as_missing() -> None:
    (row,) = trace_rows({"arc-challenge.val.137"})
    labels = lookup_label(DEFAULT_TRACE, row["prompt"])
    assert labels["gpt-4-1106-preview"] is None
    assert labels["gpt-3.5-turbo-1106"] in (0.0, 1.0)
    assert lookup_label(DEFAULT_TRACE, "not a trace prompt") == {}


# -- the demo zoo on Triton -----------------------------------------------------------------------------------


@pytest.mark.triton
def test_all_demo_models_are_ready(demo_zoo) -> None:
    names = [m.triton_name for m in demo_zoo.models]

    async def body(zoo: TritonZoo) -> tuple[bool, dict[str, bool]]:
        return await zoo.server_ready(), await zoo.ready_models(names + ["no-such-model"])

    server_ready, ready = run(body, demo_zoo.server.grpc_url)
    assert server_ready
    assert ready == {**dict.fromkeys(names, True), "no-such-model": False}


@pytest.mark.triton
def test_trace_prompt_gets_the_recorded_outcome_of_that_model(demo_zoo) -> None:
    grader = TraceGrader(demo_zoo.trace)
    rows = trace_rows(SAMPLE_IDS)
    assert len(rows) == len(SAMPLE_IDS)

    async def body(zoo: TritonZoo) -> dict[tuple[str, str], str]:
        calls = {
            (r["prompt_id"], m.triton_name): zoo.complete(m.triton_name, r["prompt"])
            for r in rows
            for m in demo_zoo.models
        }
        answers = await asyncio.gather(*calls.values())
        return dict(zip(calls, answers))

    answers = run(body, demo_zoo.server.grpc_url)
    words = set()
    for row in rows:
        for m in demo_zoo.models:
            label = grader.outcomes(row["prompt"])[m.trace_name].label
            expected = f"[replay of {m.trace_name} on {row['prompt_id']}] recorded outcome: {expected_word(label)}"
            assert answers[(row["prompt_id"], m.triton_name)] == expected
            words.add(expected_word(label))
    assert words == {"correct", "incorrect", "unlabelled"}


@pytest.mark.triton
def test_streaming_gives_several_chunks_that_join_to_the_full_answer(demo_zoo) -> None:
    (row,) = trace_rows({"winogrande.dev.1"})
    model = demo_zoo.models[0].triton_name

    async def body(zoo: TritonZoo) -> tuple[list[str], str]:
        chunks = [c async for c in zoo.generate(model, row["prompt"], timeout_s=10)]
        return chunks, await zoo.complete(model, row["prompt"], timeout_s=10)

    chunks, whole = run(body, demo_zoo.server.grpc_url)
    assert 2 <= len(chunks) <= 4
    assert "".join(chunks) == whole
    assert whole.startswith(f"[replay of {demo_zoo.models[0].trace_name} on winogrande.dev.1]")


@pytest.mark.triton
def test_unknown_prompt_gets_a_deterministic_answer(demo_zoo) -> None:
    model = demo_zoo.models[-1].triton_name

    async def body(zoo: TritonZoo) -> list[str]:
        return [await zoo.complete(model, "Is this in the trace? Ünïcode too.") for _ in range(2)]

    first, second = run(body, demo_zoo.server.grpc_url)
    assert first == second
    assert "no recorded outcome" in first


@pytest.mark.triton
@pytest.mark.parametrize("sampling", ["{not json", "[1, 2]", {"max_tokens": "many"}, {"max_tokens": 0}])
def test_bad_sampling_parameters_fail_the_request(demo_zoo, sampling) -> None:
    model = demo_zoo.models[0].triton_name

    async def body(zoo: TritonZoo) -> str:
        with pytest.raises(ModelFailed, match="sampling_parameters") as failure:
            await zoo.complete(model, "hello", sampling=sampling)
        assert failure.value.model == model
        return await zoo.complete(model, "hello", sampling={"max_tokens": 3, "temperature": 0.0})

    assert run(body, demo_zoo.server.grpc_url) == "[replay of mistralai/mistral-7b-chat]"


@pytest.mark.triton
def test_unknown_model_is_unavailable(demo_zoo) -> None:
    async def body(zoo: TritonZoo) -> None:
        with pytest.raises(ModelUnavailable, match="no-such-model"):
            await zoo.complete("no-such-model", "hello")

    run(body, demo_zoo.server.grpc_url)


@pytest.mark.triton
def test_unloaded_model_is_unavailable_until_loaded_again(demo_zoo) -> None:
    server, model = demo_zoo.server, demo_zoo.models[1].triton_name

    async def ready(zoo: TritonZoo) -> bool:
        return (await zoo.ready_models([model]))[model]

    async def generate_fails(zoo: TritonZoo) -> None:
        await zoo.complete(model, "warm the config cache")
        server.unload_model(model)
        deadline = time.monotonic() + 10
        while await ready(zoo) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # unload is asynchronous in Triton; readiness drops within milliseconds
        assert not await ready(zoo)
        with pytest.raises(ModelUnavailable, match=model):
            await zoo.complete(model, "hello")
        with pytest.raises(ModelUnavailable):
            [c async for c in zoo.generate(model, "hello")]

    try:
        run(generate_fails, server.grpc_url)
    finally:
        server.load_model(model)
    assert run(ready, server.grpc_url)
    assert "no recorded outcome" in run(lambda zoo: zoo.complete(model, "hello"), server.grpc_url)


def test_unreachable_triton_makes_every_model_unavailable() -> None:
    url = f"127.0.0.1:{free_port()}"

    async def body(zoo: TritonZoo) -> tuple[bool, dict[str, bool]]:
        with pytest.raises(ModelUnavailable):
            await zoo.complete("mistral-7b-chat", "hello", timeout_s=2)
        return await zoo.server_ready(), await zoo.ready_models(["a", "b"])

    assert run(body, url) == (False, {"a": False, "b": False})


# -- a second, slow server: deadlines and shutdown ------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("slow")
    build_demo_repository(root / "models", models=["gpt-4-1106-preview"], latency_ms=1500)
    build_demo_repository(root / "models", models=["mistralai/mistral-7b-chat"], decoupled=False)
    build_demo_repository(root / "models", models=["mistralai/mixtral-8x7b-chat"])
    server = TritonServer(root / "models", work_dir=root / "work", stop_grace_s=10)
    with server:
        yield server


@pytest.mark.triton
def test_a_slow_model_raises_timeout_and_keeps_serving(slow_server) -> None:
    async def body(zoo: TritonZoo) -> str:
        began = time.monotonic()
        with pytest.raises(ModelTimeout, match="gpt-4-1106-preview"):
            await zoo.complete("gpt-4-1106-preview", "hello", timeout_s=0.3)
        assert time.monotonic() - began < 1.0
        return await zoo.complete("gpt-4-1106-preview", "hello", timeout_s=10)

    assert "no recorded outcome" in run(body, slow_server.grpc_url)


@pytest.mark.triton
def test_slow_requests_overlap_inside_one_instance(slow_server) -> None:
    async def body(zoo: TritonZoo) -> float:
        began = time.monotonic()
        await asyncio.gather(*(zoo.complete("gpt-4-1106-preview", f"q{i}", timeout_s=10) for i in range(8)))
        return time.monotonic() - began

    assert run(body, slow_server.grpc_url) < 1.5 * 3


@pytest.mark.triton
def test_a_model_that_is_not_decoupled_is_called_with_plain_infer(slow_server) -> None:
    async def body(zoo: TritonZoo) -> tuple[list[str], str]:
        with pytest.raises(ModelFailed, match="not valid JSON"):
            await zoo.complete("mistral-7b-chat", "hello", sampling="{")
        chunks = [c async for c in zoo.generate("mistral-7b-chat", "hello")]
        return chunks, await zoo.complete("mistral-7b-chat", "hello")

    chunks, whole = run(body, slow_server.grpc_url)
    assert chunks == [whole]
    assert whole.startswith("[replay of mistralai/mistral-7b-chat] no recorded outcome")


@pytest.mark.triton
def test_a_model_reloaded_with_another_config_is_called_as_it_is_now(slow_server) -> None:
    """The zoo caches each model's config; a model reloaded in place as decoupled made every later call fail
    ("ModelInfer RPC doesn't support models with decoupled transaction policy") until the router restarted."""
    config = slow_server.model_repository / "mistral-7b-chat" / "config.pbtxt"
    plain = config.read_text()
    assert "decoupled: false" in plain

    async def body(zoo: TritonZoo) -> tuple[str, list[str]]:
        before = await zoo.complete("mistral-7b-chat", "hello")  # caches the plain config
        config.write_text(plain.replace("decoupled: false", "decoupled: true"))
        await asyncio.to_thread(slow_server.load_model, "mistral-7b-chat")  # reloaded in place, never unavailable
        after = await zoo.complete("mistral-7b-chat", "hello")
        chunks = [c async for c in zoo.generate("mistral-7b-chat", "one two three four five")]
        assert after == before
        return after, chunks

    try:
        _, chunks = run(body, slow_server.grpc_url)
    finally:
        config.write_text(plain)
        slow_server.load_model("mistral-7b-chat")
    assert len(chunks) > 1  # streamed now that the model is decoupled


@pytest.mark.triton
def test_a_hung_triton_is_unreachable_not_a_slow_model() -> None:
    """A Triton that accepts connections and never answers fails the config lookup: that is Triton, not the
    model (a model timeout kept the model available and made every fallback wait again)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"

        async def body() -> None:
            async with TritonZoo(url) as zoo:  # control calls: 2 s
                for model in ("m1", "m2"):  # the call's deadline ends before gRPC's connection attempt gives up
                    with pytest.raises(TritonUnreachable, match=f"Triton at {url} unreachable") as err:
                        await zoo.complete(model, "hello", timeout_s=5)
                    # "timeout" when the lookup's 2 s end first (a ModelTimeout before), "unreachable" when gRPC's
                    # wait for the server's first HTTP/2 frame does
                    assert err.value.kind in ("timeout", "unreachable"), err.value

        asyncio.run(body())


@pytest.mark.triton
def test_a_caller_that_stops_reading_early_does_not_block_shutdown(slow_server) -> None:
    # Cancelling a stream while its last responses are in flight leaks the instance in Triton 2.51 (the model
    # then never unloads); TritonZoo drains abandoned streams instead. The stop test below checks the outcome.
    async def body(zoo: TritonZoo) -> None:
        async def first_chunks(model: str, i: int) -> str:
            chunks = []
            async for chunk in zoo.generate(model, f"early {i}", timeout_s=10):
                chunks.append(chunk)
                if len(chunks) == 2:
                    break
            return "".join(chunks)

        calls = [first_chunks("gpt-4-1106-preview", i) for i in range(8)]
        calls += [first_chunks("mixtral-8x7b-chat", i) for i in range(200)]
        assert all(await asyncio.gather(*calls))

    run(body, slow_server.grpc_url)


@pytest.mark.triton
def test_server_stops_cleanly_with_its_whole_process_group(slow_server) -> None:
    pgid = slow_server.pid
    assert pgid is not None and os.getpgid(pgid) == pgid
    began = time.monotonic()
    assert slow_server.stop() == 0, slow_server.log_tail()
    assert time.monotonic() - began < 5
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not slow_server.running()
    assert slow_server.stop() is None  # idempotent


@pytest.mark.triton
def test_a_broken_model_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    models = build_demo_repository(tmp_path / "models", models=["gpt-4-1106-preview"])
    (tmp_path / "models" / models[0].triton_name / "1" / "model.py").write_text("raise RuntimeError('boom')\n")
    server = TritonServer(tmp_path / "models", work_dir=tmp_path / "work", startup_timeout_s=60)
    with pytest.raises(TritonStartError, match="boom"):
        server.start()
    assert not server.running()
    assert server.stop() is None
