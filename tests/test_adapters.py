"""Adapters (LoRA, LoRA-XS, TinyLoRA) against oracles: merged weights, transformers + PEFT, NumPy formulas."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import tina_jax
from tina_jax import adapters
from tina_jax.models import decoder, load_config
from tina_jax.models.linear import LowRank, SvdCore, materialize_tree
from tina_jax.models.loading import Model, load_hf_dir

TOL = 1e-4
KINDS = ("lora", "lora_xs", "tinylora")
HP = {"lora": dict(r=4, alpha=8.0), "lora_xs": dict(r=4), "tinylora": dict(u=3, n_tie=5)}


from test_models import _batch  # noqa: E402  (the left-padded parity batch)


_FORWARD = jax.jit(tina_jax.forward, static_argnums=0)  # cached across tests by config and pytree layout


def _logits(cfg, params, ids, mask):
    return np.asarray(_FORWARD(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))


def _hf_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.numpy()


def _randomize(ad: adapters.Adapter, seed: int = 7) -> adapters.Adapter:
    """Non-zero adapter values: B (LoRA), R (LoRA-XS) or v (TinyLoRA) drawn from normals."""
    key = jax.random.key(seed)
    t = ad.trainable
    if ad.spec.kind == "lora":
        t = {n: {"a": f["a"], "b": 0.1 * jax.random.normal(jax.random.fold_in(key, i), f["b"].shape)}
             for i, (n, f) in enumerate(t.items())}
    elif ad.spec.kind == "lora_xs":
        t = {n: {"core": 0.3 * jax.random.normal(jax.random.fold_in(key, i), c["core"].shape)}
             for i, (n, c) in enumerate(t.items())}
    else:
        t = {"v": 0.05 * jax.random.normal(key, t["v"].shape)}
    return ad.replace(trainable=t)


def _adapter(kind, cfg, params, seed=0, **hp):
    return _randomize(adapters.init(kind, cfg, params, jax.random.key(seed), **{**HP[kind], **hp}))


def _real(mask):
    return mask.astype(bool)


# ------------------------------------------------------------------------------------------------
# Parity: merged weights, PEFT, merged HF checkpoint
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_apply_equals_merge_and_changes_logits(kind, hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("qwen2_tied")[0])
    ad = _adapter(kind, cfg, params)
    ids, mask = _batch(cfg.vocab_size)
    got = _logits(cfg, adapters.apply(params, ad), ids, mask)
    merged = adapters.merge(params, ad)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(merged))
    want = _logits(cfg, merged, ids, mask)
    base = _logits(cfg, params, ids, mask)
    r = _real(mask)
    np.testing.assert_allclose(got[r], want[r], atol=TOL, rtol=0)
    assert np.abs(got[r] - base[r]).max() > 1e-2  # the adapter really does something
    # merge = base + delta in fp32 for every targeted kernel
    for name, d in adapters.delta_weights(ad).items():
        np.testing.assert_allclose(merged["layers"][name], params["layers"][name] + d, atol=1e-6)


@pytest.mark.parametrize("kind,model", [("lora", "llama"), ("lora", "qwen2_untied_mha"), ("tinylora", "qwen3")])
def test_peft_export_matches_transformers_peft(kind, model, hf_tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, _ = hf_tiny_dir(model)
    cfg, params = load_hf_dir(path)
    ad = _adapter(kind, cfg, params)
    out = adapters.export_peft(ad, cfg, tmp_path / "peft", base_model_name_or_path=str(path))
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM" and conf["r"] == ad.spec.r
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(hf, str(out)).eval()
    assert "lora_A" in dict(peft_model.named_modules())[
        "base_model.model.model.layers.1.self_attn.q_proj"]._modules
    ids, mask = _batch(cfg.vocab_size)
    want = _hf_logits(peft_model, ids, mask)
    got = _logits(cfg, adapters.apply(params, ad), ids, mask)
    np.testing.assert_allclose(got[_real(mask)], want[_real(mask)], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind,model", [("lora", "llama_mha_untied"), ("lora_xs", "qwen2_tied"),
                                        ("tinylora", "llama")])
def test_merged_export_loads_in_transformers(kind, model, hf_tiny_dir, tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    path, _ = hf_tiny_dir(model)
    cfg, params = load_hf_dir(path)
    ad = _adapter(kind, cfg, params)
    out = adapters.export_merged(Model(config=cfg, params=params, tokenizer=None), ad, tmp_path / "merged")
    names = set(load_file(out / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not cfg.tie_word_embeddings)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids, mask = _batch(cfg.vocab_size)
    want = _hf_logits(hf, ids, mask)
    got = _logits(cfg, adapters.apply(params, ad), ids, mask)
    np.testing.assert_allclose(got[_real(mask)], want[_real(mask)], atol=TOL, rtol=0)
    # and tina_jax reads its own export back to the merged params exactly
    cfg2, p2 = load_hf_dir(out)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, p2, adapters.merge(params, ad))


def test_load_peft_round_trip(hf_tiny_dir, tmp_path):
    cfg, params = load_hf_dir(hf_tiny_dir("qwen2_tied")[0])
    ad = _adapter("lora", cfg, params, target_modules=("[qv]_proj", "down_proj"), dropout=0.1, use_rslora=True)
    assert ad.spec.targets == ("q_proj", "v_proj", "down_proj")
    back = adapters.load_peft(adapters.export_peft(ad, cfg, tmp_path / "p"), cfg, params)
    assert back.spec == ad.spec
    jax.tree.map(np.testing.assert_array_equal, back.trainable, ad.trainable)
    # an SVD adapter comes back as the equivalent LoRA: same update
    tl = _adapter("tinylora", cfg, params)
    lo = adapters.load_peft(adapters.export_peft(tl, cfg, tmp_path / "t"), cfg, params)
    assert lo.spec.kind == "lora" and lo.spec.scale == tl.spec.scale
    for name, d in adapters.delta_weights(tl).items():
        np.testing.assert_allclose(adapters.delta_weights(lo)[name], d, atol=1e-6)


def _corrupt(src, dst, cfg_update=None, tensors_update=None):
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    if cfg_update:
        c = json.loads((dst / "adapter_config.json").read_text())
        c.update(cfg_update)
        (dst / "adapter_config.json").write_text(json.dumps(c))
    if tensors_update:
        t = load_file(dst / "adapter_model.safetensors")
        tensors_update(t)
        save_file(t, dst / "adapter_model.safetensors")
    return dst


def test_load_peft_rejects_unsupported(hf_tiny_dir, tmp_path):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    src = adapters.export_peft(_adapter("lora", cfg, params), cfg, tmp_path / "ok")
    stem = "base_model.model.model.layers.1.self_attn.q_proj"
    with pytest.raises(ValueError, match="DoRA"):
        adapters.load_peft(_corrupt(src, tmp_path / "dora", {"use_dora": True}), cfg)
    with pytest.raises(ValueError, match="peft_type"):
        adapters.load_peft(_corrupt(src, tmp_path / "ia3", {"peft_type": "IA3"}), cfg)
    with pytest.raises(ValueError, match="layers_to_transform"):
        adapters.load_peft(_corrupt(src, tmp_path / "sub", {"layers_to_transform": [0]}), cfg)

    def add_head(t):
        t["base_model.model.lm_head.lora_A.weight"] = np.zeros((4, 64), np.float32)
    with pytest.raises(ValueError, match="lm_head.*cannot adapt"):
        adapters.load_peft(_corrupt(src, tmp_path / "head", tensors_update=add_head), cfg)

    def bad_shape(t):
        t[f"{stem}.lora_B.weight"] = t[f"{stem}.lora_B.weight"][:-1]
    with pytest.raises(ValueError, match=r"layers\.1\.self_attn\.q_proj\.lora_B\.weight has shape"):
        adapters.load_peft(_corrupt(src, tmp_path / "shape", tensors_update=bad_shape), cfg)

    def drop_layer(t):
        del t[f"{stem}.lora_A.weight"]
    with pytest.raises(ValueError, match=r"q_proj lacks lora_A/lora_B for layers \[1\]"):
        adapters.load_peft(_corrupt(src, tmp_path / "gap", tensors_update=drop_layer), cfg)
    # a PEFT adapter for a wider model does not fit this one
    other = cfg.replace(hidden_size=32)
    with pytest.raises(ValueError, match="has shape"):
        adapters.load_peft(src, other)


# ------------------------------------------------------------------------------------------------
# TinyLoRA: formula, count, tying
# ------------------------------------------------------------------------------------------------
def test_tinylora_update_matches_numpy_formula(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama_mha_untied")[0])
    u, r, alpha = 3, 2, 32.0
    ad = _adapter("tinylora", cfg, params, u=u, n_tie=4)
    assert ad.spec.scale == alpha / r and ad.trainable["v"].dtype == jnp.float32
    v = np.asarray(ad.trainable["v"], np.float64)
    delta = {k: np.asarray(x) for k, x in adapters.delta_weights(ad).items()}
    for t, name in enumerate(ad.spec.targets):
        p = np.asarray(ad.frozen[name]["p"], np.float64)  # [L, u, r, r], fixed N(0, 1)
        for layer in range(cfg.num_layers):
            k = np.asarray(params["layers"][name][layer], np.float64)  # [in, out], y = x @ K
            U, S, Vt = np.linalg.svd(k, full_matrices=False)
            us_np, vt_np = U[:, :r] * S[:r], Vt[:r]
            us = np.asarray(ad.frozen[name]["us"][layer], np.float64)
            sign = np.sign(np.sum(us * us_np, axis=0))  # singular vectors are defined up to a joint sign
            np.testing.assert_allclose(us, us_np * sign, atol=1e-5)
            np.testing.assert_allclose(np.asarray(ad.frozen[name]["vt"][layer]), vt_np * sign[:, None], atol=1e-5)
            g = (layer * len(ad.spec.targets) + t) // 4  # tiled: (layer, module) order, chunks of 4
            core = np.einsum("i,ijk->jk", v[g], p[layer]) / math.sqrt(u)
            want = (alpha / r) * (us_np * sign) @ core @ (vt_np * sign[:, None])
            np.testing.assert_allclose(delta[name][layer], want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_tinylora_13_parameters_on_qwen25_7b():
    cfg = load_config("qwen2.5-7b-instruct")
    assert cfg.num_layers * 7 == 196
    assert adapters.count_trainable("tinylora", cfg, u=1, n_tie=16) == 13
    assert adapters.count_trainable("tinylora", cfg, u=1, n_tie=16, tie_mode="structured") == 7 * 2
    assert adapters.count_trainable("tinylora", cfg, u=4, n_tie=1) == 4 * 196
    # the real init, run shape-only: no 7B weights, no SVD
    ab = jax.eval_shape(lambda p, k: adapters.init("tinylora", cfg, p, k, u=1, n_tie=16),
                        decoder.param_shapes(cfg), jax.random.key(0))
    assert adapters.num_trainable(ab) == 13 and ab.trainable["v"].shape == (13, 1)
    assert ab.frozen["gate_proj"]["us"].shape == (28, 3584, 2)
    assert "13 params" in adapters.summary(ab)
    lora = jax.eval_shape(lambda p, k: adapters.init("lora", cfg, p, k), decoder.param_shapes(cfg),
                          jax.random.key(0))
    assert adapters.num_trainable(lora) == adapters.count_trainable("lora", cfg)


# 3 layers x 7 modules, n_tie=3: flat (layer, module) index // 3, listed per module over layers
TILED_3 = {"q_proj": [0, 2, 4], "k_proj": [0, 2, 5], "v_proj": [0, 3, 5], "o_proj": [1, 3, 5],
           "gate_proj": [1, 3, 6], "up_proj": [1, 4, 6], "down_proj": [2, 4, 6]}
# structured, n_tie=2: per module type, layers {0, 1} and {2}
STRUCTURED_2 = {n: [2 * m, 2 * m, 2 * m + 1] for m, n in enumerate(adapters.KERNELS)}


@pytest.mark.parametrize("mode,n_tie,groups", [("tiled", 3, TILED_3), ("structured", 2, STRUCTURED_2)])
def test_tying_one_sgd_step(mode, n_tie, groups, hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    ad = adapters.init("tinylora", cfg, params, jax.random.key(3), u=2, n_tie=n_tie, tie_mode=mode,
                       projections="shared", init_std=0.01)
    assert {n: list(ix) for n, ix in zip(ad.spec.targets, ad.spec.tie_index)} == groups
    n_groups = max(max(g) for g in groups.values()) + 1
    assert ad.trainable["v"].shape == (n_groups, 2) == (ad.spec.num_groups, ad.spec.u)
    # a random linear functional of the adapted kernels (the path through the model is covered by
    # test_grads_hold_only_adapter_leaves...; this keeps the test free of a model compile)
    w = {n: jax.random.normal(jax.random.fold_in(jax.random.key(4), i), params["layers"][n].shape)
         for i, n in enumerate(ad.spec.targets)}

    def loss(t):
        merged = adapters.merge(params, ad.replace(trainable=t))
        return sum(jnp.sum(merged["layers"][n] * w[n]) for n in w)

    opt = optax.sgd(0.1)
    upd, _ = opt.update(jax.jit(jax.grad(loss))(ad.trainable), opt.init(ad.trainable))
    new = optax.apply_updates(ad.trainable, upd)
    before, after = adapters.cores(ad), adapters.cores(ad.replace(trainable=new))
    change = {(n, l): np.asarray(after[n][l] - before[n][l]) for n in groups for l in range(cfg.num_layers)}
    assert all(np.abs(c).max() > 1e-6 for c in change.values())
    for (n1, l1), c1 in change.items():
        for (n2, l2), c2 in change.items():
            if groups[n1][l1] == groups[n2][l2]:
                np.testing.assert_array_equal(c1, c2)
            else:
                assert np.abs(c1 - c2).max() > 1e-6, (n1, l1, n2, l2)


def test_unshared_projections_use_the_group_v(hf_tiny_dir):
    """P per module and layer (the paper's text), v tied: dcore = dv[group] . P / sqrt(u)."""
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    ad = adapters.init("tinylora", cfg, params, jax.random.key(3), u=2, n_tie=3, projections="per_module")
    assert ad.frozen["q_proj"]["p"].shape == (3, 2, 2, 2) and "p" not in ad.frozen
    dv = 0.3 * jax.random.normal(jax.random.key(9), ad.trainable["v"].shape)
    after = adapters.cores(ad.replace(trainable={"v": ad.trainable["v"] + dv}))
    before = adapters.cores(ad)
    for name, ix in TILED_3.items():
        for layer, g in enumerate(ix):
            want = np.einsum("i,ijk->jk", np.asarray(dv[g]), np.asarray(ad.frozen[name]["p"][layer])) / math.sqrt(2)
            np.testing.assert_allclose(after[name][layer] - before[name][layer], want, atol=1e-6)


def _authors_p(shape, r=2, u=2):
    """The authors' init order (jxmorris12/verl-lora lora_utils.py): manual_seed(42) in get_linear_rec_svd,
    torch.svd_lowrank(W^T [in, out], q=r, niter=10), then RandomLinear: randn(u) and P = randn(u, r, r)."""
    import torch

    torch.manual_seed(42)
    torch.svd_lowrank(torch.ones(shape) + torch.eye(*shape), q=r, niter=10)
    torch.randn(u)
    return torch.randn(u, r, r).numpy()


def test_projection_sharing_modes(hf_tiny_dir):
    """shared_by_min_dim (default) reproduces which modules share P in the authors' code: equal smaller kernel
    dimension -> identical P (checked with torch's own RNG on those shapes); per_module draws each one."""
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    shapes = dict(zip(adapters.KERNELS, [(64, 64), (64, 32), (64, 32), (64, 64), (64, 96), (64, 96), (96, 64)]))
    ref = {n: _authors_p(sh) for n, sh in shapes.items()}
    ad = adapters.init("tinylora", cfg, params, jax.random.key(3), u=2, n_tie=3)
    assert ad.spec.projections == "shared_by_min_dim"
    p = {n: np.asarray(ad.frozen[n]["p"]) for n in adapters.KERNELS}
    for a in adapters.KERNELS:
        assert all(np.array_equal(p[a][0], p[a][l]) for l in range(cfg.num_layers))  # same in every layer
        for b in adapters.KERNELS:
            same_ref = np.array_equal(ref[a], ref[b])
            assert same_ref == (min(shapes[a]) == min(shapes[b])), (a, b)  # the authors' sharing pattern
            assert np.array_equal(p[a][0], p[b][0]) == same_ref, (a, b)
    per = adapters.init("tinylora", cfg, params, jax.random.key(3), u=2, n_tie=3, projections="per_module")
    flat = [np.asarray(per.frozen[n]["p"][l]) for n in adapters.KERNELS for l in range(cfg.num_layers)]
    assert all(not np.array_equal(x, y) for i, x in enumerate(flat) for y in flat[i + 1:])
    with pytest.raises(ValueError, match="projections"):
        adapters.init("tinylora", cfg, params, jax.random.key(3), projections="tied")


# ------------------------------------------------------------------------------------------------
# Gradients and efficiency
# ------------------------------------------------------------------------------------------------
def _jaxpr_out_shapes(jaxpr):
    """Every equation output shape in a jaxpr and its sub-jaxprs (scan bodies, remat, pjit...)."""
    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # ClosedJaxpr
                    out += _jaxpr_out_shapes(sub.jaxpr)
                elif hasattr(sub, "eqns"):
                    out += _jaxpr_out_shapes(sub)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_grads_hold_only_adapter_leaves_and_no_full_size_arrays(kind, hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    ad = _adapter(kind, cfg, params)
    ids, mask = _batch(cfg.vocab_size)

    def loss(t, p=params):
        return tina_jax.forward(cfg, adapters.apply(p, ad.replace(trainable=t), dropout_rng=jax.random.key(0)),
                                jnp.asarray(ids), jnp.asarray(mask)).mean()

    traced = jax.jit(jax.grad(loss)).trace(ad.trainable)
    grads = traced.lower().compile()(ad.trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(ad.trainable)
    assert jax.tree.map(lambda x: x.shape, grads) == jax.tree.map(lambda x: x.shape, ad.trainable)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    full = set()
    for name in ad.spec.targets:
        i, o = ad.spec.shape_of(name)
        full |= {(i, o), (o, i), (cfg.num_layers, i, o), (cfg.num_layers, o, i)}
    shapes = _jaxpr_out_shapes(traced.jaxpr.jaxpr)
    assert not full & set(shapes), sorted(full & set(shapes))
    if kind == "lora":  # negative control: the full-parameter gradient does produce those shapes
        full_grad = jax.make_jaxpr(jax.grad(lambda p: tina_jax.forward(cfg, p, jnp.asarray(ids)).mean()))(params)
        assert full & set(_jaxpr_out_shapes(full_grad.jaxpr))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_update_leaves_logits_unchanged(kind, hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("qwen2_tied")[0])
    hp = {} if kind == "lora" else {"init_std": 0.0}
    ad = adapters.init(kind, cfg, params, jax.random.key(0), **{**HP[kind], **hp})  # LoRA: B = 0 by default
    ids, mask = _batch(cfg.vocab_size)
    np.testing.assert_allclose(_logits(cfg, adapters.apply(params, ad), ids, mask),
                               _logits(cfg, params, ids, mask), atol=1e-6, rtol=0)
    if kind == "lora":  # PEFT's Kaiming-uniform A: U(-1/sqrt(in), 1/sqrt(in))
        a = np.asarray(ad.trainable["down_proj"]["a"])
        bound = 1 / math.sqrt(cfg.intermediate_size)
        assert a.min() >= -bound and a.max() <= bound and a.max() > 0.9 * bound and a.min() < -0.9 * bound
    else:
        init_std = adapters.init(kind, cfg, params, jax.random.key(0), **HP[kind])
        leaf = jax.tree.leaves(init_std.trainable)[0]
        assert 0 < float(jnp.std(leaf)) < 3e-5  # N(0, 1e-5^2)


# ------------------------------------------------------------------------------------------------
# LoRA dropout
# ------------------------------------------------------------------------------------------------
def test_lowrank_dropout_hits_the_adapter_input_only():
    p = 0.3
    x = jax.random.normal(jax.random.key(0), (64, 64)) + 3.0  # no exact zeros
    base = jax.random.normal(jax.random.key(1), (64, 64))
    eye = jnp.eye(64)
    c = LowRank(base=base, a=eye, b=eye, scale=1.0, dropout_key=jax.random.key(2), dropout_rate=p)
    dropped = np.asarray(c.dense(x, jnp.float32) - x @ base)  # = drop(x) @ I @ I
    xs = np.asarray(x)
    zero = np.abs(dropped) < 1e-4
    np.testing.assert_allclose(dropped[~zero], xs[~zero] / (1 - p), rtol=1e-4)
    assert abs(zero.mean() - p) < 0.03
    no_key = LowRank(base=base, a=eye, b=eye, scale=1.0)
    np.testing.assert_allclose(no_key.dense(x, jnp.float32), x @ base + x, rtol=1e-6)


def test_lora_dropout_only_with_rng(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    ids, mask = _batch(cfg.vocab_size)
    ad = _adapter("lora", cfg, params, dropout=0.5)
    plain = _logits(cfg, adapters.apply(params, ad), ids, mask)
    k1 = _logits(cfg, adapters.apply(params, ad, dropout_rng=jax.random.key(1)), ids, mask)
    k1b = _logits(cfg, adapters.apply(params, ad, dropout_rng=jax.random.key(1)), ids, mask)
    k2 = _logits(cfg, adapters.apply(params, ad, dropout_rng=jax.random.key(2)), ids, mask)
    np.testing.assert_array_equal(k1, k1b)
    assert np.abs(k1 - plain).max() > 1e-3 and np.abs(k1 - k2).max() > 1e-3
    np.testing.assert_allclose(_logits(cfg, adapters.merge(params, ad), ids, mask)[_real(mask)],
                               plain[_real(mask)], atol=TOL)  # merged/sampling path: no dropout
    legacy = _logits(cfg, adapters.apply(params, ad, dropout_rng=jax.random.PRNGKey(1)), ids, mask)
    assert np.isfinite(legacy).all()
    c = adapters.apply(params, ad, dropout_rng=jax.random.key(1))["layers"]["q_proj"]
    keys = np.asarray(jax.random.key_data(c.dropout_key))
    assert c.dropout_rate == 0.5 and keys.shape[0] == cfg.num_layers and len({k.tobytes() for k in keys}) == 3
    ad0 = ad.replace(spec=adapters.make_spec("lora", cfg, r=4, alpha=8.0, dropout=0.0)[0])
    np.testing.assert_array_equal(_logits(cfg, adapters.apply(params, ad0, dropout_rng=jax.random.key(1)), ids, mask),
                                  plain)


# ------------------------------------------------------------------------------------------------
# Errors and introspection
# ------------------------------------------------------------------------------------------------
def test_bad_hyper_parameters_raise_clear_errors(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])  # hidden 64, kv_dim 32
    key = jax.random.key(0)
    cases = [
        (dict(kind="lora_xs", r=33), r"r=33 exceeds min\(in, out\) = 32 of k_proj"),
        (dict(kind="lora", r=0), "positive integer"),
        (dict(kind="lora", target_modules=("q_proj", "lm_head")), "'lm_head' matches no module"),
        (dict(kind="lora", target_modules=()), "empty"),
        (dict(kind="tinylora", u=0), "u .* >= 1"),
        (dict(kind="tinylora", n_tie=0), "n_tie .* >= 1"),
        (dict(kind="tinylora", tie_mode="random"), "unknown tie_mode 'random'"),
        (dict(kind="dora"), "unknown adapter kind 'dora'"),
        (dict(kind="lora", u=2), r"unknown hyper-parameter\(s\) \['u'\]"),
        (dict(kind="lora", dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(kind="lora_xs", r=4, init_std=-1.0), "init_std"),
    ]
    for kw, msg in cases:
        kw = dict(kw)
        kind = kw.pop("kind")
        with pytest.raises(ValueError, match=msg):
            adapters.init(kind, cfg, params, key, **kw)
    ad = adapters.init("lora", cfg, params, key, r=4)
    with pytest.raises(ValueError, match="already an adapter container"):
        adapters.apply(adapters.apply(params, ad), ad)
    _, other = load_hf_dir(hf_tiny_dir("llama_mha_untied")[0])
    with pytest.raises(ValueError, match="another model"):
        adapters.apply(other, ad)


def test_summary_and_counts(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    for kind in KINDS:
        ad = adapters.init(kind, cfg, params, jax.random.key(0), **HP[kind])
        assert adapters.num_trainable(ad) == adapters.count_trainable(kind, cfg, **HP[kind])
        s = adapters.summary(ad)
        assert kind in s and "down_proj" in s and f"{adapters.num_trainable(ad):,} params" in s
    ad = adapters.init("lora", cfg, params, jax.random.key(0), r=4)
    assert adapters.num_trainable(ad) == 3 * 4 * sum(i + o for i, o in ad.spec.shapes)
    assert isinstance(adapters.apply(params, _adapter("lora_xs", cfg, params))["layers"]["o_proj"], SvdCore)
    assert jax.tree.structure(materialize_tree(adapters.apply(params, ad))) == jax.tree.structure(params)
