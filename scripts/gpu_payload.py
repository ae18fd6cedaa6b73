"""Pack what `python -m bench.gpu_route` needs on a lent GPU box into parts that fit the device tool's carry.

    .venv/bin/python scripts/gpu_payload.py            # writes .gpu/ (ignored by git), prints the device calls

The box (the device tool's 'cuda' image: Python 3.12 with numpy, numba, onnx, tokenizers, prometheus-client,
tqdm, matplotlib, PyTorch's CUDA 13 libraries; nothing can be fetched there) lacks ONNX Runtime's CUDA build and a
few of the router's packages. What travels, besides the working tree (~18 MiB, sent with every call):
- site/: the wheels below, unpacked as `pip install --target` would (pure unzip: none has scripts to install)
  for CPython 3.12 on manylinux x86_64: onnxruntime-gpu (CUDA 13; its TensorRT provider left out), and the
  router's grpcio, protobuf, grpcio-health-checking, grpcio-reflection, tritonclient, python-rapidjson at the
  versions constraints.txt pins;
- model/: the fused float16 encoder (service/encoder/half.py, ~45 MB: the box gets no weights and exports
  nothing, so the fp32 export never travels), tokenizer.json, and fp32 reference embeddings of the first 1,024
  benchmark prompts (bench/fp16_check.py) for the agreement check.
All of it is one tar, xz-compressed (the CUDA provider library is most of it: 284 MB, ~19% smaller with the
wheel's deflate, more with xz), cut into parts of at most 64 MiB minus the working tree, plus manifest.json
(the parts and the tar's sha256).

On the box every call runs the same command, `make bench-gpu-device` (scripts/gpu_device.sh), carrying
`.gpu/manifest.json` and one part: a call that completes the set unpacks it and runs the benchmark, the others
only store their part in /tmp/gpu/parts. The machine must stay warm between the calls (30 s): make them back to
back. The last call's output ends with the results; its $OUT holds gpu_route.json, to copy to
docs/bench/gpu_route.json here before `python -m bench.report`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORT_GPU = "onnxruntime-gpu==1.31.1"  # the newest CUDA build on PyPI (1.32 has none yet); CUDA 13, like the box
PINNED = ("grpcio", "protobuf", "grpcio-health-checking", "grpcio-reflection", "tritonclient", "python-rapidjson")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
LEAVE_OUT = ("libonnxruntime_providers_tensorrt.so",)
CARRY_MIB = 64
MARGIN_MIB = 2


def pins() -> list[str]:
    got = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip() in PINNED:
            got[name.strip()] = f"{name.strip()}=={version.strip()}"
    missing = set(PINNED) - set(got)
    if missing:
        raise SystemExit(f"constraints.txt pins none of {sorted(missing)}")
    return [ORT_GPU, *got.values()]


def download(reqs: list[str], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *reqs]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def unpack(wheels: list[Path], site: Path) -> None:
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            for info in z.infolist():
                if Path(info.filename).name not in LEAVE_OUT:
                    z.extract(info, site)


def xz(data: bytes) -> bytes:
    """xz -9 on every core when the xz tool is there (the box decompresses it with Python's lzma)."""
    if shutil.which("xz"):
        return subprocess.run(["xz", "-9", "-T0", "-c"], input=data, capture_output=True, check=True).stdout
    return lzma.compress(data, preset=9)


def tree_bytes() -> int:
    """What travels with every call: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())


def model_files(model: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.fp16_check import fp16_model, reference
    from messplus.service.encoder import default_model_dir

    fp32, fp16 = fp16_model()
    model.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fp16, model / fp16.name)
    shutil.copyfile(default_model_dir() / "tokenizer.json", model / "tokenizer.json")
    reference(model / "reference.npz", fp32, 1024)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--keep-stage", action="store_true", help="keep .gpu/stage (the unpacked tree)")
    args = ap.parse_args(argv)
    out, stage = args.out, args.out / "stage"
    shutil.rmtree(out, ignore_errors=True)
    (stage / "wheels").mkdir(parents=True)
    wheels = download(pins(), stage / "wheels")
    unpack(wheels, stage / "site")
    model_files(stage / "model")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sub in ("site", "model"):
            tar.add(stage / sub, arcname=sub)
    print(f"tar: {buf.tell() / 2**20:.0f} MiB; compressing (xz -9, a few minutes)", flush=True)
    blob = xz(buf.getvalue())
    part_size = (CARRY_MIB - MARGIN_MIB) * 2**20 - tree_bytes()
    parts = []
    for i in range(0, len(blob), part_size):
        name = f"part{len(parts):02d}"
        (out / name).write_bytes(blob[i:i + part_size])
        parts.append(name)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    manifest = {"parts": parts, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "commit": commit,
                "wheels": [w.name for w in wheels], "model": sorted(p.name for p in (stage / "model").iterdir())}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if not args.keep_stage:
        shutil.rmtree(stage)
    print(f"{len(blob) / 2**20:.0f} MiB in {len(parts)} parts of at most {part_size / 2**20:.1f} MiB (the working "
          f"tree that travels with each: {tree_bytes() / 2**20:.1f} MiB)")
    print("On the device, back to back (the machine goes back after 30 s idle), one call per part:")
    for name in parts:
        print(f'  run(command="bash scripts/gpu_device.sh", carry=[".gpu/manifest.json", ".gpu/{name}"], timeout_s=600)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
