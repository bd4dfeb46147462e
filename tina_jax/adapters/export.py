"""Adapters out to, and LoRA back in from, the Hugging Face ecosystem.

- ``export_peft``: a PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
  ``peft.PeftModel.from_pretrained`` (and vLLM's LoRA loader) read on top of the transformers model.
  Tensor names: ``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` [r, in] (= A^T) and
  ``...lora_B.weight`` [out, r] (= B^T). LoRA-XS and TinyLoRA updates scale * (U S) R V^T are exactly a
  rank-r LoRA with A = (U S) R and B = V^T, so they export in the same format (and come back as LoRA).
- ``load_peft``: a PEFT LoRA directory -> a ``"lora"`` ``Adapter``; unsupported PEFT features (DoRA,
  biases, modules_to_save, layer subsets, rank/alpha patterns, modules we do not have) are rejected.
- ``export_merged``: the update folded into the weights, written as a full HF checkpoint directory
  (config.json, model.safetensors with HF names, tokenizer, generation_config.json).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tina_jax.adapters.core import (
    KERNELS, Adapter, _check_params, cores, make_spec, merge,
)
from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.models.decoder import param_shapes
from tina_jax.models.weight_maps import weight_map

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _module_prefixes(config: ModelConfig) -> dict[str, str]:
    """Kernel name -> HF module path with an ``{i}`` layer slot, e.g. 'model.layers.{i}.self_attn.q_proj'."""
    out = {}
    for hf_name, ppath, _ in weight_map(config, param_shapes(config)):
        if len(ppath) == 2 and ppath[0] == "layers" and ppath[1] in KERNELS:
            out[ppath[1]] = hf_name[: -len(".weight")]
    return out


def lora_factors(adapter: Adapter) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{name: (A [L, in, r], B [L, r, out])} with update = scale * A @ B, for any adapter kind."""
    spec = adapter.spec
    if spec.kind == "lora":
        return {n: (adapter.trainable[n]["a"], adapter.trainable[n]["b"]) for n in spec.targets}
    cs = cores(adapter)
    return {n: (adapter.frozen[n]["us"] @ cs[n], adapter.frozen[n]["vt"]) for n in spec.targets}


def export_peft(adapter: Adapter, config: ModelConfig, path: str | os.PathLike, *,
                base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter`` as a PEFT LoRA directory at ``path`` (created); returns the path.

    Factors are written in fp32. The SVD kinds are written as the equivalent rank-r LoRA
    (dropout 0), which PEFT and vLLM load as plain LoRA.
    """
    from safetensors.numpy import save_file

    spec = adapter.spec
    if spec.num_layers != config.num_layers:
        raise ValueError(f"adapter has {spec.num_layers} layers but config has {config.num_layers}")
    prefixes = _module_prefixes(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in lora_factors(adapter).items():
        a, b = np.asarray(jax.device_get(a), np.float32), np.asarray(jax.device_get(b), np.float32)
        for i in range(spec.num_layers):
            stem = _PEFT_PREFIX + prefixes[name].format(i=i)
            tensors[f"{stem}.lora_A.weight"] = np.ascontiguousarray(a[i].T)  # [r, in]
            tensors[f"{stem}.lora_B.weight"] = np.ascontiguousarray(b[i].T)  # [out, r]
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt", "tina_jax_kind": spec.kind})
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": spec.r,
        "lora_alpha": int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha,
        "lora_dropout": spec.dropout,
        "use_rslora": spec.use_rslora,
        "target_modules": list(spec.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    return path


_UNSUPPORTED = {  # PEFT field -> (value meaning "not used", why we refuse anything else)
    "use_dora": (False, "DoRA (use_dora=true) is not supported; export a plain LoRA"),
    "bias": ("none", "LoRA biases (bias != 'none') are not supported"),
    "modules_to_save": (None, "modules_to_save (fully trained extra modules) is not supported"),
    "layers_to_transform": (None, "layers_to_transform (a subset of layers) is not supported; "
                                  "tina_jax adapts every layer of a targeted module"),
    "rank_pattern": ({}, "per-module ranks (rank_pattern) are not supported"),
    "alpha_pattern": ({}, "per-module alphas (alpha_pattern) are not supported"),
    "fan_in_fan_out": (False, "fan_in_fan_out=true (Conv1D models such as GPT-2) is not supported"),
    "lora_bias": (False, "lora_bias=true is not supported"),
    "target_parameters": (None, "target_parameters (nn.Parameter targets) is not supported"),
    "trainable_token_indices": (None, "trainable_token_indices is not supported"),
    "layer_replication": (None, "layer_replication is not supported"),
}


def load_peft(path: str | os.PathLike, config: ModelConfig, params: Any = None) -> Adapter:
    """A ``"lora"`` Adapter from a PEFT LoRA directory saved for a model with ``config``.

    Targets are read from the tensors present; every targeted module must cover all layers. With
    ``params`` the base kernels' shapes are checked too. Raises ValueError naming the problem.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ValueError(f"{cfg_file} not found: a PEFT adapter directory needs {CONFIG_NAME}")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for key, (ok, why) in _UNSUPPORTED.items():
        val = cfg.get(key, ok)
        unused = val is None or val == ok or (isinstance(val, (dict, list)) and not val)
        if not unused:
            raise ValueError(f"{cfg_file}: {why} (found {key}={val!r})")
    wfile = path / WEIGHTS_NAME
    if not wfile.is_file():
        extra = " (adapter_model.bin found: re-save with safe_serialization=True)" if (
            path / "adapter_model.bin").is_file() else ""
        raise ValueError(f"{wfile} not found{extra}")
    tensors = load_file(str(wfile))
    r = int(cfg["r"])
    prefixes = _module_prefixes(config)
    patterns = {n: re.compile(re.escape(p).replace(r"\{i\}", r"(\d+)") + r"$") for n, p in prefixes.items()}
    key_re = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B)(?:\.[A-Za-z0-9_]+)?\.weight$")
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key, arr in tensors.items():
        m = key_re.match(key)
        if not m:
            raise ValueError(f"{wfile}: tensor {key!r} is not a LoRA A/B weight tina_jax can load "
                             "(DoRA magnitudes, embedding LoRA and biases are not supported)")
        module, which = m.group(1), m.group(2)
        for name, pat in patterns.items():
            mm = pat.match(module)
            if mm:
                break
        else:
            raise ValueError(f"{wfile}: tensor {key!r} adapts module {module!r}, which tina_jax cannot "
                             f"adapt; supported modules: {list(prefixes)} of every layer")
        layer = int(mm.group(1))
        if layer >= config.num_layers:
            raise ValueError(f"{wfile}: tensor {key!r} is for layer {layer}, but the model has "
                             f"{config.num_layers} layers")
        found.setdefault(name, {}).setdefault(layer, {})[which] = arr
    if not found:
        raise ValueError(f"{wfile} holds no LoRA tensors")
    targets = tuple(n for n in KERNELS if n in found)
    spec, _ = make_spec("lora", config, targets, r=r, alpha=float(cfg["lora_alpha"]),
                        dropout=float(cfg.get("lora_dropout") or 0.0), use_rslora=bool(cfg.get("use_rslora")))
    trainable = {}
    for name, (din, dout) in zip(spec.targets, spec.shapes):
        layers = found[name]
        missing = [i for i in range(config.num_layers) if set(layers.get(i, {})) != {"lora_A", "lora_B"}]
        if missing:
            raise ValueError(f"{wfile}: {name} lacks lora_A/lora_B for layers {missing}; tina_jax adapts "
                             "every layer of a targeted module")
        a, b = [], []
        for i in range(config.num_layers):
            ta, tb = layers[i]["lora_A"], layers[i]["lora_B"]
            stem = _PEFT_PREFIX + prefixes[name].format(i=i)
            if ta.shape != (r, din):
                raise ValueError(f"{wfile}: {stem}.lora_A.weight has shape {ta.shape}, expected {(r, din)} "
                                 f"(r={r}, in={din})")
            if tb.shape != (dout, r):
                raise ValueError(f"{wfile}: {stem}.lora_B.weight has shape {tb.shape}, expected {(dout, r)} "
                                 f"(out={dout}, r={r})")
            a.append(ta.T.astype(np.float32))
            b.append(tb.T.astype(np.float32))
        trainable[name] = {"a": jax.numpy.asarray(np.stack(a)), "b": jax.numpy.asarray(np.stack(b))}
    adapter = Adapter(trainable=trainable, frozen={}, spec=spec)
    if params is not None:
        _check_params(params, spec)
    return adapter


def export_merged(model: Any, adapter: Adapter | None, path: str | os.PathLike, *,
                  dtype: str | None = None) -> Path:
    """Write ``model`` (a ``tina_jax.Model``) with ``adapter`` merged in as an HF checkpoint directory.

    config.json from ``ModelConfig.to_hf``; model.safetensors with HF tensor names (lm_head only when
    untied) in ``dtype`` (default: the config's param_dtype); the tokenizer when ``model.tokenizer`` is
    set; generation_config.json copied from a local source directory, else bos/eos ids only.
    ``adapter=None`` writes the base model. transformers and vLLM load the result directly.
    """
    from safetensors.numpy import save_file

    config: ModelConfig = model.config
    params = merge(model.params, adapter) if adapter is not None else model.params
    if any(hasattr(x, "merged") for x in jax.tree.leaves(params, is_leaf=lambda x: hasattr(x, "merged"))):
        raise ValueError("model.params already holds adapter containers; pass the base params")
    out_dtype = as_dtype(dtype or config.param_dtype)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for hf_name, ppath, transform in weight_map(config, params):
        node = params
        for k in ppath:
            node = node[k]
        arr = np.asarray(jax.device_get(node)).astype(out_dtype)
        if "{i}" in hf_name:
            for i in range(arr.shape[0]):
                tensors[hf_name.format(i=i)] = np.ascontiguousarray(arr[i].T if transform == "T" else arr[i])
        else:
            tensors[hf_name] = np.ascontiguousarray(arr.T if transform == "T" else arr)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    hf = config.replace(param_dtype=str(out_dtype)).to_hf() if dtype else config.to_hf()
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    src_gen = Path(str(getattr(model, "source", "") or "")) / "generation_config.json"
    if src_gen.is_file() and src_gen.resolve() != (path / "generation_config.json").resolve():
        shutil.copy(src_gen, path / "generation_config.json")
    else:
        gen = {k: v for k, v in (("bos_token_id", hf.get("bos_token_id")),
                                 ("eos_token_id", hf.get("eos_token_id"))) if v is not None}
        (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(str(path))
    return path


__all__ = ["export_peft", "load_peft", "export_merged", "lora_factors"]
