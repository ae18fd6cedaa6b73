"""The GPU benchmark of the whole Route path runs end to end on the CPU provider (`--smoke`): a Route-only
`messplus serve` process under the load generator, the echo ceiling, the encoder sweep and the agreement check,
its JSON and the page section rendered from it. Nothing here judges a number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import gpu_report, gpu_route
from bench.prompts import trace_prompts


def test_gpu_route_smoke_runs_every_phase_on_the_cpu(tmp_path: Path, encoder_onnx: Path) -> None:
    from messplus.service.encoder import Encoder, default_model_dir

    prompts = trace_prompts(limit=8)
    enc = Encoder.load(encoder_onnx, default_model_dir() / "tokenizer.json", threads=1)
    ref = tmp_path / "reference.npz"
    np.savez(ref, prompts=np.array(prompts), embeddings=enc.encode(prompts), model=np.array("fp32 here"))
    out = tmp_path / "bench" / "gpu_route.json"
    tokenizer = default_model_dir() / "tokenizer.json"  # given, as on a GPU box without the weights package
    assert gpu_route.main(["--smoke", "--onnx", str(encoder_onnx), "--tokenizer", str(tokenizer), "--reference",
                           str(ref), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["providers"][0] == "CPUExecutionProvider"
    assert res["agreement"]["min_cosine"] > 0.9999  # the same model and provider as the reference
    assert [r["clients"] for r in res["route"]] == [1, 2] and all(r["completed"] > 0 for r in res["route"])
    assert all(r["errors"] == {} for r in res["route"] + res["echo"])
    assert [r["batch"] for r in res["encoder"]] == [1, 4]
    assert res["router"]["mean_batch"] and "CPUExecutionProvider" in res["router"]["predictor_line"]
    page = "\n".join(gpu_report.gpu_route(out.parent))
    assert "Route / min(echo, predictor)" in page and "| 2 |" in page


def test_gpu_route_refuses_without_cuda(capsys) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return  # a GPU box: nothing to refuse
    assert gpu_route.main(["--json", "/nonexistent/never-written.json"]) == 2
    assert "not available here" in capsys.readouterr().err
