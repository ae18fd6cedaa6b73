"""Does an encoder fine-tuned on logged routing labels make a warm-started router cheaper? (issue 17)

    .venv/bin/pip install torch==2.13.0       # CPU build; this measurement only (serving and make test stay torch-free)
    .venv/bin/python -m bench.finetune_encoder [--trace openllm_bbh_dev.csv] [--seeds 3] [--epochs 3]

Per seed, the `--warm-start 0.5` split of `messplus replay`: all-MiniLM-L6-v2 (the packaged weights, as a torch
module written out here) with one logistic output per zoo model on its pooled embedding learns every recorded
label of the training half (binary cross-entropy, AdamW). The fine-tuned weights go through the project's own
ONNX exporter (service/encoder/graph.py), every prompt is embedded again by ONNX Runtime, and the same warm-start
replay runs on those embeddings: the router's heads learn the training half again, the other half is routed.
Beside it, the same replay on the frozen encoder's embeddings; the cost is against the task oracle. Each run
writes OUT/<trace>-e<epochs>.json, and docs/ROUTING-LIMITS.md's `routing-finetune` table is rendered from all
of them.
The torch module is checked against the ONNX encoder before any training (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "service" / "demo" / "traces"


def torch_minilm(weights: dict[str, np.ndarray], config: dict[str, Any]) -> Any:
    """A torch module computing what the exported ONNX graph computes: BERT (post-LayerNorm, exact GELU),
    attention-masked mean pooling, L2 normalisation; its parameters are named as in the checkpoint."""
    import torch
    from torch import nn

    H, nh, eps = int(config["hidden_size"]), int(config["num_attention_heads"]), float(config["layer_norm_eps"])
    layers = int(config["num_hidden_layers"])

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.tensor(v, dtype=torch.float32))
                                       for k, v in weights.items() if v.dtype.kind == "f"})

        def w(self, name: str) -> Any:
            return self.p[name.replace(".", "__")]

        def ln(self, x: Any, prefix: str) -> Any:
            return nn.functional.layer_norm(x, (H,), self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"), eps)

        def lin(self, x: Any, prefix: str) -> Any:
            return nn.functional.linear(x, self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias"))

        def forward(self, ids: Any, mask: Any) -> Any:
            S = ids.shape[1]
            x = self.w("embeddings.word_embeddings.weight")[ids]
            x = x + self.w("embeddings.position_embeddings.weight")[:S]
            x = x + self.w("embeddings.token_type_embeddings.weight")[0]
            x = self.ln(x, "embeddings.LayerNorm")
            bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            B = ids.shape[0]
            for i in range(layers):
                pre = f"encoder.layer.{i}"

                def heads(t: Any) -> Any:
                    return t.view(B, S, nh, H // nh).transpose(1, 2)

                q = heads(self.lin(x, f"{pre}.attention.self.query"))
                k = heads(self.lin(x, f"{pre}.attention.self.key"))
                v = heads(self.lin(x, f"{pre}.attention.self.value"))
                att = torch.softmax(q @ k.transpose(-1, -2) * (H // nh) ** -0.5 + bias, dim=-1)
                ctx = (att @ v).transpose(1, 2).reshape(B, S, H)
                x = self.ln(x + self.lin(ctx, f"{pre}.attention.output.dense"), f"{pre}.attention.output.LayerNorm")
                mid = nn.functional.gelu(self.lin(x, f"{pre}.intermediate.dense"))
                x = self.ln(x + self.lin(mid, f"{pre}.output.dense"), f"{pre}.output.LayerNorm")
            m = mask[:, :, None].float()
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return nn.functional.normalize(pooled, dim=-1)

        def state(self) -> dict[str, np.ndarray]:
            out = dict(weights)
            out.update({k.replace("__", "."): p.detach().numpy().copy() for k, p in self.p.items()})
            return out

    return MiniLM()


def batches(seqs: list[list[int]], rows: np.ndarray, size: int, pad: int) -> Any:
    import torch

    for lo in range(0, len(rows), size):
        idx = rows[lo:lo + size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[j, :len(seqs[i])] = 1
        yield idx, ids, mask


def finetune(model: Any, seqs: list[list[int]], pad: int, labels: np.ndarray, train: np.ndarray, *, epochs: int,
             lr: float, batch: int, seed: int) -> float:
    """Train the encoder and one logistic output per model on the training rows' recorded labels; the last
    epoch's mean loss."""
    import torch

    torch.manual_seed(seed)
    K = labels.shape[1]
    mean = np.nanmean(labels[train], axis=0)
    head = torch.nn.Linear(model.w("embeddings.word_embeddings.weight").shape[1], K)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(np.log(np.clip(mean, 1e-3, 1 - 1e-3) / np.clip(1 - mean, 1e-3, 1)),
                                     dtype=torch.float32))
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": lr}, {"params": head.parameters(), "lr": lr * 100}])
    rng = np.random.default_rng(seed)
    loss_sum = 0.0
    for _ in range(epochs):
        order = rng.permutation(train)
        # similar lengths together (less padding), the batches themselves shuffled
        chunks = [order[i:i + batch * 8] for i in range(0, len(order), batch * 8)]
        groups = [np.array(sorted(c, key=lambda r: len(seqs[r]))) for c in chunks]
        steps = [b for g in groups for b in batches(seqs, g, batch, pad)]
        rng.shuffle(steps)
        loss_sum, n = 0.0, 0
        model.train()
        for idx, ids, mask in steps:
            y = torch.tensor(labels[idx], dtype=torch.float32)
            seen = ~torch.isnan(y)
            logits = head(model(ids, mask) * 8.0)  # unit-norm embeddings: a fixed scale lets the head reach +-4
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[seen], y[seen])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum, n = loss_sum + loss.item(), n + 1
        loss_sum /= max(n, 1)
    return loss_sum


def write_block(doc: Path, block: str) -> None:
    """Put `block` between the doc's routing-finetune markers (as routing_table.py writes its tables)."""
    from bench.routing_table import _replace

    command = "python -m bench.finetune_encoder --trace TRACE --alphas ... --seeds 3 --epochs N"
    text = _replace(doc.read_text(encoding="utf-8"), "routing-finetune", block, command)
    doc.write_text(text, encoding="utf-8")


def render(out: Path) -> str:
    """The markdown table of every trace's results in `out` (one JSON per trace)."""
    lines = ["| trace | alpha | epochs | frozen encoder: SLA met, cost / task oracle (max) | fine-tuned: SLA met, "
             "cost / task oracle (max) | fine-tuning per seed (wall) |", "|---|---|---|---|---|---|"]
    for path in sorted(out.glob("*.json")):
        res = json.loads(path.read_text())
        seeds = res["seeds"]
        for a in seeds[0]["frozen"]:
            cells = []
            for name in ("frozen", "fine-tuned"):
                runs = [s[name][a] for s in seeds]
                task = [r["cost_vs_task_oracle"] for r in runs]
                cells.append(f"{sum(r['sla_met'] for r in runs)}/{len(runs)}, {np.mean(task):.2f}x ({max(task):.2f})")
            fit = np.mean([s["fit_s"] for s in seeds])
            lines.append(f"| {Path(res['trace']).stem} | {a} | {res['epochs']} | {cells[0]} | {cells[1]} | "
                         f"{fit:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="openllm_bbh_dev.csv")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.50, 0.55, 0.60, 0.65])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "finetune")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "ROUTING-LIMITS.md",
                    help="rewrite its routing-finetune table from every run in OUT")
    ap.add_argument("--render-only", action="store_true", help="rewrite the doc's table from OUT, run nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        write_block(args.doc, render(args.out))
        return 0

    import onnx
    import torch

    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.encoder import ensure_exported
    from messplus.service.encoder.encoder import Encoder, default_model_dir
    from messplus.service.encoder.export import read_safetensors
    from messplus.service.encoder.graph import build_model
    from messplus.service.trace import load_traces

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = default_model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    weights = read_safetensors(model_dir / "model.safetensors")
    max_tokens = PredictorConfig().max_tokens
    onnx_path = ensure_exported(ROOT / "var", print)
    frozen = Encoder.load(onnx_path, model_dir / "tokenizer.json", max_tokens=max_tokens)
    t = load_traces([DATA / args.trace])
    seqs = frozen.token_ids(list(t.prompts))
    pad = frozen._pad
    emb0 = R.embed_prompts(t, onnx_path, max_tokens, 0, ROOT / "var" / "embeddings", progress=False)

    check = torch_minilm(weights, config).eval()
    with torch.no_grad():
        probe = np.arange(min(16, len(seqs)))
        (_, ids, mask), = list(batches(seqs, probe, len(probe), pad))
        diff = float(np.abs(check(ids, mask).numpy() - frozen.encode_ids([seqs[i] for i in probe])).max())
    print(f"torch module against the ONNX encoder: max |difference| {diff:.2e}", flush=True)
    if diff > 1e-4:
        raise SystemExit("the torch module does not compute what the exported encoder computes")

    args.out.mkdir(parents=True, exist_ok=True)
    cond = R.Condition(warm_start=0.5)
    results: dict[str, Any] = {"trace": args.trace, "epochs": args.epochs, "lr": args.lr, "seeds": []}
    for seed in range(args.seeds):
        train, _ = R.split_stream(t, seed, cond)
        started = time.perf_counter()
        model = torch_minilm(weights, config)
        loss = finetune(model, seqs, pad, t.labels, train, epochs=args.epochs, lr=args.lr, batch=args.batch,
                        seed=seed)
        fit_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tuned.onnx"
            onnx.save(build_model(model.state(), config), str(path))
            tuned = Encoder.load(path, model_dir / "tokenizer.json", max_tokens=max_tokens)
            emb1 = tuned.encode_ids(seqs)
        row: dict[str, Any] = {"seed": seed, "fit_s": round(fit_s), "last_epoch_loss": round(loss, 4)}
        for name, emb in (("frozen", emb0), ("fine-tuned", emb1)):
            setup = R.ReplaySetup(alphas=tuple(args.alphas), seeds=(seed,), cond=cond, policy=R.TenantOverrides())
            row[name] = {f"{e['alpha']:.2f}": {k: e["runs"][0][k] for k in
                                                ("satisfaction", "sla_met", "cost_vs_static_mixture",
                                                 "cost_vs_task_oracle")} for e in R.replay(t, emb, setup)}
        results["seeds"].append(row)
        print(json.dumps(row), flush=True)
    (args.out / f"{Path(args.trace).stem}-e{args.epochs}.json").write_text(json.dumps(results, indent=1))
    block = render(args.out)
    print(block)
    write_block(args.doc, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
