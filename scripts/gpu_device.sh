#!/usr/bin/env bash
# On a lent GPU box (the device tool's 'cuda' image), from the repository root: store the payload part this call
# carried (.gpu/partNN, written by scripts/gpu_payload.py), and once every part of .gpu/manifest.json is there,
# unpack them into /tmp/gpu and run the GPU benchmark of the whole Route path (bench/gpu_route.py). Its JSON goes
# to $OUT (the device tool brings that folder back). `make bench-gpu-device` runs this.
set -euo pipefail
STORE=/tmp/gpu
mkdir -p "$STORE/parts"
cp .gpu/part* "$STORE/parts/" 2>/dev/null || true
status=0
python3 - "$STORE" <<'PY' || status=$?
import hashlib, io, json, lzma, sys, tarfile
from pathlib import Path
store = Path(sys.argv[1])
manifest = json.loads(Path(".gpu/manifest.json").read_text())
have = [p for p in manifest["parts"] if (store / "parts" / p).is_file()]
if len(have) < len(manifest["parts"]):
    print(f"gpu payload: {len(have)} of {len(manifest['parts'])} parts here; carry the next one")
    sys.exit(3)
if not (store / "site").is_dir():
    blob = b"".join((store / "parts" / p).read_bytes() for p in manifest["parts"])
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        sys.exit("gpu payload: the parts do not add up to the packed tar (sha256 differs); send them again")
    tarfile.open(fileobj=io.BytesIO(lzma.decompress(blob))).extractall(store)
    print(f"gpu payload: unpacked {manifest['bytes'] / 2**20:.0f} MiB into {store}")
PY
if [ "$status" = 3 ]; then exit 0; elif [ "$status" != 0 ]; then exit "$status"; fi
# the messplus package as `pip install` lays it out (pyproject's package-dir), without building anything
PKG="$STORE/pkg/messplus"
rm -rf "$STORE/pkg" && mkdir -p "$PKG"
cp -r protos/messplus/. "$PKG/"
ln -s "$PWD/service" "$PKG/service"
ln -s "$PWD/kernels" "$PKG/kernels"
export PYTHONPATH="$STORE/site:$STORE/pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || python3 -c 'import json; print(json.load(open(".gpu/manifest.json"))["commit"])')
export BENCH_COMMIT="${BENCH_COMMIT:-$COMMIT}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
M="$STORE/model"
python3 -m bench.gpu_route --onnx "$M/minilm-l6-v2.fp16-fused.onnx" --tokenizer "$M/tokenizer.json" \
  --reference "$M/reference.npz" --json "${OUT:-/tmp}/gpu_route.json" --no-docs "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_route.log"
