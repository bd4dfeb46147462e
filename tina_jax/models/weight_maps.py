"""One declarative Hugging Face name -> tina_jax parameter path table per family.

Each row is ``(hf_name, param_path, transform)``. ``{i}`` in a name marks a per-layer tensor: the L
tensors are stacked on a new leading axis. ``transform`` is ``"T"`` for nn.Linear weights (HF stores
[out, in]; tina_jax stores [in, out]) and ``None`` otherwise. A row whose param_path is absent from a
config's parameter tree (e.g. ``lm_head`` with tied embeddings) is skipped.
"""
from __future__ import annotations

Row = tuple[str, tuple[str, ...], str | None]

_L = "model.layers.{i}."

_COMMON: list[Row] = [
    ("model.embed_tokens.weight", ("embed",), None),
    (_L + "input_layernorm.weight", ("layers", "attn_norm"), None),
    (_L + "self_attn.q_proj.weight", ("layers", "q_proj"), "T"),
    (_L + "self_attn.k_proj.weight", ("layers", "k_proj"), "T"),
    (_L + "self_attn.v_proj.weight", ("layers", "v_proj"), "T"),
    (_L + "self_attn.o_proj.weight", ("layers", "o_proj"), "T"),
    (_L + "post_attention_layernorm.weight", ("layers", "mlp_norm"), None),
    (_L + "mlp.gate_proj.weight", ("layers", "gate_proj"), "T"),
    (_L + "mlp.up_proj.weight", ("layers", "up_proj"), "T"),
    (_L + "mlp.down_proj.weight", ("layers", "down_proj"), "T"),
    ("model.norm.weight", ("final_norm",), None),
    ("lm_head.weight", ("lm_head",), "T"),
]

_QKV_BIAS: list[Row] = [
    (_L + "self_attn.q_proj.bias", ("layers", "q_bias"), None),
    (_L + "self_attn.k_proj.bias", ("layers", "k_bias"), None),
    (_L + "self_attn.v_proj.bias", ("layers", "v_bias"), None),
]

_QK_NORM: list[Row] = [
    (_L + "self_attn.q_norm.weight", ("layers", "q_norm"), None),
    (_L + "self_attn.k_norm.weight", ("layers", "k_norm"), None),
]

WEIGHT_MAPS: dict[str, list[Row]] = {
    "llama": _COMMON,
    "qwen2": _COMMON + _QKV_BIAS,
    "qwen3": _COMMON + _QK_NORM,
}

# Checkpoint tensors that carry no parameters of ours (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_map(config, param_tree: dict) -> list[Row]:
    """The family's rows whose parameter exists in ``param_tree`` (nested dict of shapes or arrays):
    bias rows only with qkv_bias, lm_head only when untied, and so on."""
    rows = list(WEIGHT_MAPS[config.family])
    if config.qkv_bias and config.family != "qwen2":  # Llama with attention_bias=True
        rows += _QKV_BIAS

    def present(path):
        node = param_tree
        for k in path:
            if not isinstance(node, dict) or k not in node:
                return False
            node = node[k]
        return True

    return [r for r in rows if present(r[1])]
