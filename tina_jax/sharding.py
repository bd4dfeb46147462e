"""Device mesh and partition rules by parameter name.

The mesh has three named axes: ``data`` (batch only), ``fsdp`` (batch and the model dimension of
weights: parameters and optimizer state are sharded, gathered per layer by XLA) and ``tensor``
(head / MLP-hidden dimension of weights). Rules map a parameter's *name* (the last key of its path)
to a PartitionSpec of its trailing dimensions; stacked-layer axes and other leading axes are
replicated. An array whose sharded dimension does not divide the mesh axis is an error naming it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# name regex -> spec of the trailing dims. First match wins.
PARAM_RULES: list[tuple[str, tuple]] = [
    (r"^embed$", ("tensor", "fsdp")),  # [V, D]
    (r"^lm_head$", ("fsdp", "tensor")),  # [D, V]
    (r"^(q|k|v|gate|up)_proj$", ("fsdp", "tensor")),  # [D, out]
    (r"^(o|down)_proj$", ("tensor", "fsdp")),  # [in, D]
    (r"^(q|k|v)_bias$", ("tensor",)),
    (r".*", ()),  # norms, adapter factors, scalars: replicated
]


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor). One entry may be -1 (takes the remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh entry may be -1, got {shape}")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if len(devices) % rest:
            raise ValueError(f"{len(devices)} devices cannot fill mesh {shape}")
        shape[shape.index(-1)] = len(devices) // rest
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are available; "
            "set mesh.shape so its product equals the device count (one entry may be -1)")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def _name(path) -> str:
    for k in reversed(path):
        key = getattr(k, "key", getattr(k, "name", None))
        if isinstance(key, str):
            return key
    return ""


def spec_for(name: str, shape: Sequence[int], mesh: Mesh | None = None, where: str = "") -> P:
    """PartitionSpec for a parameter called ``name`` of ``shape`` (rules apply to trailing dims)."""
    for pattern, trailing in PARAM_RULES:
        if re.match(pattern, name):
            break
    if len(trailing) > len(shape):
        trailing = ()
    spec = (None,) * (len(shape) - len(trailing)) + tuple(trailing)
    if mesh is not None:
        for dim, ax in zip(shape, spec):
            if ax is not None and dim % mesh.shape[ax]:
                raise ValueError(
                    f"{where or name}: dimension {dim} of shape {tuple(shape)} does not divide mesh axis "
                    f"'{ax}' of size {mesh.shape[ax]}; choose a mesh shape whose '{ax}' size divides it")
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for every array leaf of a parameter-like tree (params, adapters, optimizer state)."""

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        where = jax.tree_util.keystr(path)
        return NamedSharding(mesh, spec_for(_name(path), shape, mesh, where))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch_divides(batch_size: int, mesh: Mesh, what: str = "batch") -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % n:
        raise ValueError(
            f"{what} size {batch_size} is not divisible by data x fsdp = {n} devices of the mesh "
            f"{dict(mesh.shape)}; change the batch size or the mesh shape")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def per_device_bytes(tree: Any, axis_sizes: dict[str, int]) -> int:
    """Bytes one device holds of a parameter-like tree (arrays or ShapeDtypeStructs) laid out by
    ``PARAM_RULES`` on a mesh with these axis sizes; needs no devices (dry runs size pods from a laptop)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", np.float32)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            dtype = np.uint32
        spec = spec_for(_name(path), shape)
        local = [-(-d // axis_sizes[ax]) if ax is not None else d for d, ax in zip(shape, tuple(spec))]
        total += math.prod(local) * np.dtype(dtype).itemsize
    return int(total)
