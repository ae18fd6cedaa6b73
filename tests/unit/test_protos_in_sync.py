"""The committed stubs are what scripts/gen_protos.py makes from the committed protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    committed = ROOT / "protos"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "code generation produced nothing"
    for rel in fresh:
        assert (committed / rel).read_text() == (tmp_path / rel).read_text(), (
            f"{rel} drifted from its .proto: run `make protos` and commit the result")
    stale = sorted(p.relative_to(committed) for p in committed.rglob("*_pb2*.py*")
                   if "__pycache__" not in p.parts)  # bytecode of an import from protos/ is not a stub
    assert stale == fresh, "stubs without a .proto: remove them"
