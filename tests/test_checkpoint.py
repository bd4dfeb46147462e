"""tina_jax.checkpoint: round trip (values, dtypes, tree structure, PRNG key), retention, atomicity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tina_jax.checkpoint import Checkpointer

ACC = "eval/greedy_accuracy"


def _train_arrays(seed: int = 0):
    """A realistic `arrays` pytree: nested params (f32 + bf16), an adamw+clip optax state after one
    update (namedtuples, EmptyState), PRNG key data and an int32 step."""
    k = jax.random.split(jax.random.key(seed), 4)
    params = {
        "layer0": {"a": jax.random.normal(k[0], (3, 4), jnp.float32),
                   "b": jax.random.normal(k[1], (4, 2), jnp.bfloat16)},
        "head": jax.random.normal(k[2], (5,), jnp.float32),
    }
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1))
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {"trainable": params, "opt_state": opt_state, "rng": jax.random.key_data(k[3]),
            "step": jnp.asarray(7, jnp.int32)}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x),
                                      np.asarray(y.astype(jnp.float32) if y.dtype == jnp.bfloat16 else y))


META = {"loader": {"version": 1, "grain": "{\"next_index\": 12}", "fingerprint": {"n": 100, "seed": 3}},
        "config_hash": "abc123", "wall_time_s": 12.5, "tags": ["x", None, 2]}


def test_round_trip_values_dtypes_structure_and_key(tmp_path):
    arrays = _train_arrays()
    # the optax state has namedtuples and empty states: the structure must come back exactly
    assert "EmptyState" in str(jax.tree.structure(arrays["opt_state"]))
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None and ck.best_step() is None
        assert ck.save(7, arrays, META, metrics={ACC: 0.25}) is True
        assert ck.latest_step() == 7 and ck.all_steps() == [7]
        # restore onto concrete arrays (same sharding) and onto abstract ShapeDtypeStructs
        for like in (jax.tree.map(jnp.zeros_like, arrays), jax.eval_shape(lambda: arrays)):
            out, meta = ck.restore(7, like=like)
            _assert_same(out, arrays)
            assert meta == META
        assert isinstance(out["opt_state"][1][0], optax.ScaleByAdamState)
        assert int(out["opt_state"][1][0].count) == 1
        # the PRNG key continues the same stream
        key = jax.random.wrap_key_data(out["rng"])
        np.testing.assert_array_equal(jax.random.uniform(key, (4,)),
                                      jax.random.uniform(jax.random.wrap_key_data(arrays["rng"]), (4,)))
        assert out["rng"].sharding == arrays["rng"].sharding
        assert ck.metrics(7) == {ACC: 0.25}


def test_latest_restore_and_errors(tmp_path):
    arrays = _train_arrays()
    ck = Checkpointer(tmp_path / "ck")
    with pytest.raises(ValueError, match="no checkpoint"):
        ck.restore(None, like=arrays)
    ck.save(1, arrays, {"i": 1})
    a2 = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.uint32 else x, arrays)
    ck.save(2, a2, {"i": 2})
    out, meta = ck.restore(None, like=arrays)
    assert meta == {"i": 2}
    _assert_same(out, a2)
    out, meta = ck.restore(1, like=arrays)
    assert meta == {"i": 1}
    _assert_same(out, arrays)
    with pytest.raises(ValueError, match="step 5"):
        ck.restore(5, like=arrays)
    # existing / older steps are not overwritten
    assert ck.save(2, arrays, {"i": 3}) is False
    assert ck.save(1, arrays, {"i": 3}) is False
    assert ck.restore(2, like=arrays)[1] == {"i": 2}
    with pytest.raises(ValueError, match="JSON"):
        ck.save(3, arrays, {"bad": object()})
    with pytest.raises(ValueError, match="key_data"):
        ck.save(3, dict(arrays, rng=jax.random.key(0)), {})
    with pytest.raises(ValueError, match="scalar"):
        ck.save(3, arrays, {}, metrics={ACC: np.ones(3)})
    bad_like = dict(arrays, head_extra=jnp.zeros(2))
    with pytest.raises(ValueError):
        ck.restore(2, like=bad_like)
    assert ck.all_steps() == [1, 2]
    ck.close()


def _save_series(ck, arrays, metric_values):
    for step, v in metric_values.items():
        metrics = {"loss": 1.0 / step} if v is None else {ACC: v, "loss": 1.0 / step}
        assert ck.save(step, arrays, {"step": step}, metrics=metrics)


def test_retention_last_n_plus_best(tmp_path):
    small = {"w": jnp.arange(3.0)}
    ck = Checkpointer(tmp_path / "ck", keep_last=2)
    # step 2 is best; steps without the metric are never best
    _save_series(ck, small, {1: 0.1, 2: 0.9, 3: None, 4: 0.3, 5: None, 6: 0.2})
    assert ck.all_steps() == [2, 5, 6]
    assert ck.best_step() == 2 and ck.latest_step() == 6
    # a new best replaces the old one
    _save_series(ck, small, {7: 0.95})
    assert ck.all_steps() == [6, 7] and ck.best_step() == 7
    _save_series(ck, small, {8: None, 9: None})
    assert ck.all_steps() == [7, 8, 9] and ck.best_step() == 7
    ck.close()

    # reopening the directory gives the same view, and retention continues from it
    ck2 = Checkpointer(tmp_path / "ck", keep_last=2)
    assert ck2.all_steps() == [7, 8, 9] and ck2.latest_step() == 9 and ck2.best_step() == 7
    assert ck2.restore(None, like=small)[1] == {"step": 9}
    _save_series(ck2, small, {10: 0.5})
    assert ck2.all_steps() == [7, 9, 10] and ck2.best_step() == 7
    ck2.close()


def test_retention_min_mode_no_best_and_keep_best_off(tmp_path):
    small = {"w": jnp.arange(3.0)}
    ck = Checkpointer(tmp_path / "min", keep_last=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 0.5), (2, 0.1), (3, 0.4), (4, 0.3)]:
        ck.save(step, small, {}, metrics={"loss": loss})
    assert ck.all_steps() == [2, 4] and ck.best_step() == 2
    ck.close()
    # nobody has the metric: only the last N, and no best step
    ck = Checkpointer(tmp_path / "none", keep_last=2)
    _save_series(ck, small, {1: None, 2: None, 3: None})
    assert ck.all_steps() == [2, 3] and ck.best_step() is None
    ck.close()
    # keep_best=False: the best is not protected from deletion
    ck = Checkpointer(tmp_path / "off", keep_last=2, keep_best=False)
    _save_series(ck, small, {1: 0.9, 2: 0.1, 3: 0.2})
    assert ck.all_steps() == [2, 3] and ck.best_step() == 3
    ck.close()
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path / "x", keep_last=0)
    with pytest.raises(ValueError, match="best_mode"):
        Checkpointer(tmp_path / "x", best_mode="largest")


def test_incomplete_tmp_dir_is_ignored(tmp_path):
    """A process killed mid-save leaves `<step>.orbax-checkpoint-tmp-*`: the previous step stays
    latest and restorable, and the stray directory is cleaned up."""
    arrays = _train_arrays()
    d = tmp_path / "ck"
    ck = Checkpointer(d)
    ck.save(1, arrays, {"i": 1}, metrics={ACC: 0.5})
    ck.save(2, arrays, {"i": 2})
    ck.close()
    # simulate a half-written step 3: a copy of step 2 with files missing, never renamed
    stray = d / "3.orbax-checkpoint-tmp-1754000000"
    shutil.copytree(d / "2", stray)
    (stray / "_CHECKPOINT_METADATA").unlink()
    shutil.rmtree(stray / "meta")
    victims = sorted(p for p in (stray / "arrays").rglob("*") if p.is_file())
    for p in victims[: len(victims) // 2]:
        p.unlink()
    ck = Checkpointer(d)
    assert ck.latest_step() == 2 and ck.all_steps() == [1, 2] and ck.best_step() == 1
    out, meta = ck.restore(None, like=arrays)
    assert meta == {"i": 2}
    _assert_same(out, arrays)
    ck.wait()
    assert not stray.exists()
    # training goes on: step 3 can be saved for real
    assert ck.save(3, arrays, {"i": 3})
    assert ck.restore(3, like=arrays)[1] == {"i": 3}
    ck.close()


def test_async_save_then_wait(tmp_path):
    arrays = _train_arrays(seed=1)
    ck = Checkpointer(tmp_path / "ck", async_save=True, keep_last=1)
    for step in (1, 2, 3):
        ck.save(step, arrays, {"i": step}, metrics={ACC: 0.1 * step})
    ck.wait()
    assert ck.all_steps() == [3] and ck.best_step() == 3
    out, meta = ck.restore(3, like=arrays)
    _assert_same(out, arrays)
    assert meta == {"i": 3}
    ck.close()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("_")) == ["3"]


_MESH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tina_jax.checkpoint import Checkpointer
    mesh = jax.make_mesh((2,), ("x",))
    rows = NamedSharding(mesh, P("x"))
    rep = NamedSharding(mesh, P())
    w = jax.device_put(jnp.arange(24.0).reshape(4, 6), rows)
    b = jax.device_put(jnp.arange(6, dtype=jnp.int32), rep)
    ck = Checkpointer(sys.argv[1])
    ck.save(1, {"w": w, "b": b}, {})
    like = {"w": jax.ShapeDtypeStruct((4, 6), jnp.float32, sharding=rows),
            "b": jax.ShapeDtypeStruct((6,), jnp.int32, sharding=rep)}
    out, _ = ck.restore(1, like=like)
    ck.close()
    print(json.dumps({
        "w_sharding": out["w"].sharding == rows, "b_sharding": out["b"].sharding == rep,
        "w_shards": sorted([list(s.data.shape) for s in out["w"].addressable_shards]),
        "w_equal": bool(np.array_equal(out["w"], np.arange(24.0).reshape(4, 6))),
        "b_equal": bool(np.array_equal(out["b"], np.arange(6))),
    }))
""")


def test_sharded_restore_on_two_device_mesh(tmp_path):
    """Restore onto ShapeDtypeStruct targets with NamedShardings places each shard on its device."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, str(tmp_path / "ck")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"w_sharding": True, "b_sharding": True, "w_shards": [[2, 6], [2, 6]],
                   "w_equal": True, "b_equal": True}
