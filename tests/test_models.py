"""Parity of tina_jax's decoder with Hugging Face transformers (PyTorch CPU) on tiny random configs."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tina_jax
from tina_jax.models import decoder
from tina_jax.models.loading import CheckpointError, load_hf_dir

from conftest import TINY

TOL = 1e-4


def _batch(vocab: int, seed: int = 1):
    """Left-padded batch: rows with 0, 3 and 7 pad tokens (pad id = 2, as SmolLM2's EOS)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    for row, pad in enumerate([0, 3, 7]):
        ids[row, :pad] = 2
        mask[row, :pad] = 0
    ids[0, 5] = 2  # a "pad-id" token inside a real prompt must be attended (masks come from lengths)
    return ids, mask


def _hf_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos, dtype=torch.long), output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("kind", sorted(TINY))
def test_whole_model_and_per_layer_parity(kind, hf_tiny_dir):
    path, hf = hf_tiny_dir(kind)
    cfg, params = load_hf_dir(path)
    assert cfg.num_heads // cfg.num_kv_heads == hf.config.num_attention_heads // hf.config.num_key_value_heads
    ids, mask = _batch(cfg.vocab_size)
    want_logits, want_hidden = _hf_logits(hf, ids, mask)
    got_logits = np.asarray(tina_jax.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
    assert got_logits.dtype == np.float32 and got_logits.shape == want_logits.shape
    real = mask.astype(bool)  # padded query positions are undefined in both implementations
    np.testing.assert_allclose(got_logits[real], want_logits[real], atol=TOL, rtol=0)

    final, layers = decoder.hidden_states(cfg, params, jnp.asarray(ids), jnp.asarray(mask), return_layers=True)
    # HF: hidden_states[0] = embeddings, [i] = after layer i (the last one after the final norm).
    for i in range(cfg.num_layers - 1):
        np.testing.assert_allclose(np.asarray(layers[i])[real], want_hidden[i + 1][real], atol=TOL, rtol=0,
                                   err_msg=f"layer {i}")
    np.testing.assert_allclose(np.asarray(final)[real], want_hidden[-1][real], atol=TOL, rtol=0)


def test_config_fields_follow_family(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("qwen2_tied")[0])
    assert cfg.family == "qwen2" and cfg.qkv_bias and cfg.tie_word_embeddings and "lm_head" not in params
    assert cfg.rope_theta == 1e6
    cfg, params = load_hf_dir(hf_tiny_dir("qwen3")[0])
    assert cfg.qk_norm and not cfg.qkv_bias and "q_norm" in params["layers"] and "lm_head" in params
    cfg, _ = load_hf_dir(hf_tiny_dir("llama")[0])
    assert cfg.rope_theta == 1e5 and not cfg.qkv_bias


def test_rope_theta_matters(hf_tiny_dir):
    """The parity test would catch a wrong rope_theta (a pitfall seen in a peer framework)."""
    path, hf = hf_tiny_dir("llama")
    cfg, params = load_hf_dir(path)
    ids, mask = _batch(cfg.vocab_size)
    want, _ = _hf_logits(hf, ids, mask)
    wrong = np.asarray(tina_jax.forward(cfg.replace(rope_theta=1e6), params, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(wrong - want).max() > 100 * TOL


def test_kv_cache_forward_matches_full_forward(hf_tiny_dir):
    """Prefill a left-padded prompt into the cache, decode 3 tokens one by one: logits equal the full forward."""
    cfg, params = load_hf_dir(hf_tiny_dir("qwen2_tied")[0])
    ids, mask = _batch(cfg.vocab_size)
    b, t = ids.shape
    full = np.asarray(tina_jax.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
    s = 16
    cache = decoder.init_cache(cfg, b, s)
    pos = decoder.positions_from_mask(jnp.asarray(mask))
    kv_valid = jnp.zeros((b, s), bool).at[:, :t].set(jnp.asarray(mask, bool))
    h, cache = decoder.forward_cached(cfg, params, jnp.asarray(ids[:, :8]), pos[:, :8], cache, jnp.int32(0), kv_valid)
    got = [np.asarray(decoder.logits_from_hidden(cfg, params, h))]
    for j in range(8, t):
        h, cache = decoder.forward_cached(cfg, params, jnp.asarray(ids[:, j:j + 1]), pos[:, j:j + 1], cache,
                                          jnp.int32(j), kv_valid)
        got.append(np.asarray(decoder.logits_from_hidden(cfg, params, h)))
    got = np.concatenate(got, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], full[real], atol=TOL, rtol=0)
    # the one cache layout of prefill and decoding: keys [L, B, Hkv, hd, S], values [L, B, Hkv, S, hd]
    assert cache["k"].shape == (cfg.num_layers, b, cfg.num_kv_heads, cfg.head_dim, s)
    assert cache["v"].shape == (cfg.num_layers, b, cfg.num_kv_heads, s, cfg.head_dim)


def test_scan_compiles_once_for_any_depth():
    """Layers run under lax.scan: the jaxpr has one scan whatever the depth."""
    small = tina_jax.ModelConfig(family="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                                 num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8)
    for depth in (2, 12):
        cfg = small.replace(num_layers=depth)
        params = tina_jax.init_params(cfg, jax.random.key(0))
        jaxpr = jax.make_jaxpr(lambda p: tina_jax.forward(cfg, p, jnp.ones((1, 4), jnp.int32)))(params)
        assert str(jaxpr).count("scan[") == 1


def test_remat_and_bf16_compute_close_to_fp32(hf_tiny_dir):
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0])
    ids, mask = _batch(cfg.vocab_size)
    ref = np.asarray(tina_jax.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
    remat = np.asarray(tina_jax.forward(cfg.replace(remat=True), params, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(remat, ref, atol=1e-6)
    cfg16 = cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = tina_jax.forward(cfg16, p16, jnp.asarray(ids), jnp.asarray(mask))
    assert out.dtype == jnp.float32
    real = mask.astype(bool)
    assert np.abs(np.asarray(out)[real] - ref[real]).max() < 0.1


# ------------------------------------------------------------------------------------------------
# Malformed checkpoints: errors name the file and the tensor
# ------------------------------------------------------------------------------------------------
def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_missing_config_json(hf_tiny_dir, tmp_path):
    d = _copy(hf_tiny_dir("llama")[0], tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_hf_dir(d)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors_named(hf_tiny_dir, tmp_path, keep):
    d = _copy(hf_tiny_dir("llama")[0], tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_hf_dir(d)


def test_missing_tensor_named(hf_tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(hf_tiny_dir("qwen2_tied")[0], tmp_path)
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias.*missing"):
        load_hf_dir(d)


def test_shape_mismatch_named(hf_tiny_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(hf_tiny_dir("llama")[0], tmp_path)
    tensors = load_file(d / "model.safetensors")
    tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.2.mlp.up_proj.weight"][:-1]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight.*model\.safetensors.*shape"):
        load_hf_dir(d)


def test_unsupported_architecture(hf_tiny_dir, tmp_path):
    d = _copy(hf_tiny_dir("llama")[0], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*MistralForCausalLM"):
        load_hf_dir(d)


def test_no_weights_and_unknown_source(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_dir(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        tina_jax.load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(CheckpointError, match="registry names"):
        tina_jax.load_model("definitely-not-a-model")


def test_sharded_index_checkpoint(hf_tiny_dir, tmp_path):
    """A model.safetensors.index.json checkpoint split over two files loads identically."""
    from safetensors.numpy import load_file, save_file

    src, _ = hf_tiny_dir("qwen2_untied_mha")
    tensors = load_file(src / "model.safetensors")
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in parts.items():
        save_file({n: tensors[n] for n in part}, d / fname)
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _, p1 = load_hf_dir(src)
    _, p2 = load_hf_dir(d)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        load_hf_dir(d)


def test_load_with_mesh_places_shardings(hf_tiny_dir):
    from tina_jax.sharding import make_mesh

    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    cfg, params = load_hf_dir(hf_tiny_dir("llama")[0], mesh=mesh)
    assert params["layers"]["q_proj"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
