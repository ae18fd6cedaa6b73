"""The heads' snapshots and their restore (routing/learner.py) over a real SQLite file: each head learns each
label once, also after the zoo changed between restarts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.routing.heads import Heads
from messplus.service.routing.router import Router
from messplus.service.routing.types import Decision, RouteItem
from messplus.service.state.sqlite import SqliteStore

DIM = 8
ZOO = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
       ModelConfig(name="mid", triton_model="mid", cost_per_request=3.0),
       ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANT = TenantConfig(name="acme", alpha=0.8, c=0.0)


def start(path: Path, models: tuple[ModelConfig, ...]) -> Router:
    return Router(models, [TENANT], Heads([m.name for m in models], DIM), SqliteStore(path), snapshot_every=10**6)


def label(r: Router, n: int, rng: np.random.Generator) -> None:
    for _ in range(n):
        emb = rng.standard_normal(DIM).astype(np.float32)
        emb /= np.linalg.norm(emb)
        (routed,) = r.route([RouteItem(tenant="acme")], emb[None])
        assert isinstance(routed.decision, Decision)
        r.record(routed.decision, routed.embedding).result()
        r.feedback("acme", routed.decision.request_id, float(rng.random() < 0.7), []).result()


def test_heads_restored_after_a_zoo_change_learn_each_label_once(tmp_path: Path) -> None:
    path, rng = tmp_path / "state.sqlite3", np.random.default_rng(1)
    r = start(path, ZOO)
    label(r, 20, rng)
    r.snapshot().result()  # every head at seq 20
    r.store.close()
    r = start(path, ZOO[:2])  # "big" leaves the zoo
    label(r, 15, rng)
    r.snapshot().result()  # cheap and mid at seq 35, big's snapshot still at 20
    kept = r.heads.W.copy(), r.heads.S.copy()
    r.store.close()
    r = start(path, ZOO)  # "big" is back
    np.testing.assert_array_equal(r.heads.W[:2], kept[0])  # were labels 21-35 learned again, these would move
    np.testing.assert_array_equal(r.heads.S[:2], kept[1])
    assert r.heads.last_seq == 35
    r.store.close()


def test_a_snapshot_takes_the_heads_and_their_seq_together(tmp_path: Path) -> None:
    r = start(tmp_path / "state.sqlite3", ZOO)
    label(r, 5, np.random.default_rng(2))
    heads, seq = r.heads.snapshot_all()
    assert seq == r.heads.last_seq == 5 and len(heads) == len(ZOO)
    assert all(math.isfinite(float(np.frombuffer(w).sum())) for w, _ in heads)
    r.store.close()


def test_a_request_of_a_model_that_left_the_zoo_is_not_awaited_and_its_feedback_says_why(tmp_path: Path) -> None:
    """Requests served by a model no longer in the zoo stayed in the expected queue for good (their label cannot
    be applied), and their Feedback answered NOT_FOUND "not a request of tenant 'acme'"."""
    import pytest

    from messplus.service.errors import Conflict

    path = tmp_path / "state.sqlite3"
    r = start(path, ZOO[2:])  # "big" alone serves
    (routed,) = r.route([RouteItem(tenant="acme")], np.ones((1, DIM), np.float32) / math.sqrt(DIM))
    assert isinstance(routed.decision, Decision)
    r.record(routed.decision, routed.embedding).result()
    assert r.tenants["acme"].pending_n == 1
    r.store.close()
    r = start(path, ZOO[:2])  # "big" leaves the zoo
    assert r.tenants["acme"].pending_n == 0 and r.tenants["acme"].requests == 1
    with pytest.raises(Conflict, match="served by model 'big', which is no longer in the zoo"):
        r.feedback("acme", routed.decision.request_id, 1.0, [])
    r.store.close()


def test_one_heads_prediction_is_that_column_of_the_zoos() -> None:
    """Heads.predicted (a Feedback's prediction as its label comes) runs one model's head: it must agree with
    the zoo-wide predict, variance moderation included, for every model, and refuse an embedding of another size."""
    heads, rng = Heads([m.name for m in ZOO], DIM), np.random.default_rng(3)
    for _ in range(40):
        emb = rng.standard_normal(DIM).astype(np.float32)
        heads.update(emb / np.linalg.norm(emb), int(rng.integers(3)), float(rng.random() < 0.6))
    emb = rng.standard_normal(DIM).astype(np.float32)
    zoo = heads.predict(emb[None])[0][0]
    assert [heads.predicted(emb, k) for k in range(3)] == [float(p) for p in zoo]
    assert len(set(zoo.round(6))) == 3 and heads.predicted(emb[:-1], 0) is None
