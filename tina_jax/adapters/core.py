"""Adapters as parameter transforms: ``init`` -> ``Adapter``; ``apply`` -> params the model runs as is.

An ``Adapter`` holds three things:

- ``trainable``: the only pytree that is optimised and checkpointed (fp32)
    lora:     {name: {"a": [L, in, r], "b": [L, r, out]}}
    lora_xs:  {name: {"core": [L, r, r]}}                         (R)
    tinylora: {"v": [G, u]}                                       (G tie groups)
- ``frozen``: constants derived at init (never optimised; recomputable from the base + seed)
    lora:     {}
    lora_xs:  {name: {"us": [L, in, r], "vt": [L, r, out]}}
    tinylora: {name: {"us", "vt", "p": [L, u, r, r]}}  or, with projections="shared", {"p": [u, r, r], name: {...}}
- ``spec``: static ``AdapterSpec`` (kind, targets, shapes, hyper-parameters, tie layout).

``apply(params, adapter)`` replaces each targeted kernel ``params["layers"][name]`` [L, in, out] by a
container from ``tina_jax.models.linear`` (``LowRank`` / ``SvdCore``) that keeps the leading layer axis,
so the decoder's ``lax.scan`` slices it like any other leaf. Train with

    def loss_fn(trainable):
        p = apply(params, adapter.replace(trainable=trainable), dropout_rng=key)
        return loss(tina_jax.forward(cfg, p, ...))
    grads = jax.grad(loss_fn)(adapter.trainable)          # same pytree as adapter.trainable

Targets are chosen with ``target_modules``: fnmatch patterns (``fnmatch.fnmatchcase``, e.g. ``"q_proj"``,
``"*_proj"``, ``"[qkv]_proj"``) matched against the kernel names under ``params["layers"]``:
q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. Every pattern must match at least one.
Order is always the decoder's (q, k, v, o, gate, up, down), whatever the pattern order.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from tina_jax.adapters import lora as _lora
from tina_jax.adapters import svd as _svd
from tina_jax.models.config import ModelConfig
from tina_jax.models.linear import is_container, materialize_tree
from tina_jax.validation import FieldError, is_int, is_real

KINDS = ("lora", "lora_xs", "tinylora")
KERNELS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = KERNELS
_DEFAULTS = {"lora": _lora.DEFAULTS, "lora_xs": _svd.LORA_XS_DEFAULTS, "tinylora": _svd.TINYLORA_DEFAULTS}


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """Static description of an adapter (hashable: safe as a jit static argument / pytree aux data).

    targets: kernel names in decoder order; shapes: (in, out) per target; r: rank; alpha: the LoRA
    alpha (scale = alpha / r, or alpha / sqrt(r) with use_rslora); dropout: LoRA input dropout
    (training only); u, n_tie, tie_mode, projections: TinyLoRA (see ``svd.py``).
    """

    kind: str
    targets: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    num_layers: int
    r: int
    alpha: float
    use_rslora: bool = False
    dropout: float = 0.0
    u: int = 1
    n_tie: int = 1
    tie_mode: str = "tiled"
    projections: str = "shared_by_min_dim"

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    @property
    def tie_index(self) -> tuple[tuple[int, ...], ...]:
        """TinyLoRA: the v row used by every (target, layer), [len(targets)][L]."""
        return _svd.tie_index(self.num_layers, len(self.targets), self.n_tie, self.tie_mode)

    @property
    def num_groups(self) -> int:
        return _svd.num_groups(self.num_layers, len(self.targets), self.n_tie, self.tie_mode)

    def shape_of(self, name: str) -> tuple[int, int]:
        return self.shapes[self.targets.index(name)]


@struct.dataclass
class Adapter:
    """``trainable`` (optimised, checkpointed), ``frozen`` (constants), static ``spec``. See module doc."""

    trainable: Any
    frozen: Any
    spec: AdapterSpec = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Which adapter to train and its hyper-parameters (the run config's ``adapter`` section).

    ``build(cfg, model_config, params, rng)`` makes the ``Adapter`` (``None`` for ``kind="none"``: full-parameter
    training). Every value is checked here, once; ``make_spec`` adds the checks that need the model (rank
    against the kernel shapes). Fields a kind does not use are ignored by it (``hparams`` picks the kind's).

    kind: lora | lora_xs | tinylora | none. r: rank. alpha: scale = alpha / r (alpha / sqrt(r) with
    use_rslora); None = r (scale 1, LoRA-XS). dropout: LoRA input dropout (training only). target_modules:
    fnmatch patterns over the kernel names (``resolve_targets``). u, n_tie, tie_mode, projections: TinyLoRA
    (``svd.py``). init_std: the SVD kinds' trainable init N(0, init_std^2). seed: the adapter's init key.
    The defaults are those of the run config (LoRA r=32 alpha=128 on all 7 projections, no dropout), not the
    per-kind defaults of ``init``.
    """

    kind: Literal["lora", "lora_xs", "tinylora", "none"] = "lora"
    r: int = 32
    alpha: float | None = 128.0
    dropout: float = 0.0
    use_rslora: bool = False
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    u: int = 1
    n_tie: int = 1
    tie_mode: Literal["tiled", "structured"] = "tiled"
    projections: Literal["shared_by_min_dim", "per_module", "shared"] = "shared_by_min_dim"
    init_std: float = 1e-5
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, field: str, message: str):
            if not ok:
                raise FieldError(field, f"{message}, got {getattr(self, field)!r}")

        need(self.kind in KINDS + ("none",), "kind", f"unknown adapter kind {self.kind!r}; use one of "
             f"{KINDS + ('none',)} (none = full-parameter training)")
        need(is_int(self.r) and self.r >= 1, "r", "rank r must be a positive integer")
        need(self.alpha is None or is_real(self.alpha), "alpha", "alpha must be a finite number or None (= r)")
        need(is_real(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", "LoRA dropout must be in [0, 1)")
        need(is_int(self.u) and self.u >= 1, "u", "TinyLoRA u (trainable values per tie group) must be an integer >= 1")
        need(is_int(self.n_tie) and self.n_tie >= 1, "n_tie",
             "TinyLoRA n_tie (modules sharing one v) must be an integer >= 1")
        need(self.tie_mode in _svd.TIE_MODES, "tie_mode", f"unknown tie_mode {self.tie_mode!r}; use one of "
             f"{_svd.TIE_MODES}")
        need(self.projections in _svd.PROJECTIONS, "projections", f"unknown TinyLoRA projections "
             f"{self.projections!r}; use one of {_svd.PROJECTIONS}")
        need(is_real(self.init_std) and self.init_std >= 0, "init_std", "init_std must be >= 0")
        need(is_int(self.seed), "seed", "seed must be an integer")
        tm = self.target_modules
        object.__setattr__(self, "target_modules", (tm,) if isinstance(tm, str) else tuple(tm))
        resolve_targets(self.target_modules)  # every pattern must match a kernel name
        if self.alpha is not None:
            object.__setattr__(self, "alpha", float(self.alpha))

    def hparams(self) -> dict:
        """The hyper-parameters ``init`` takes for this kind (``target_modules`` and ``seed`` apart)."""
        hp: dict[str, Any] = dict(r=self.r, alpha=self.alpha, use_rslora=self.use_rslora)
        if self.kind == "lora":
            hp["dropout"] = self.dropout
        if self.kind in ("lora_xs", "tinylora"):
            hp["init_std"] = self.init_std
        if self.kind == "tinylora":
            hp.update(u=self.u, n_tie=self.n_tie, tie_mode=self.tie_mode, projections=self.projections)
        return hp


# ----------------------------------------------------------------------------------------------
# Spec construction and validation (config only, no arrays)
# ----------------------------------------------------------------------------------------------
def _kernel_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    d, f, q, kv = config.hidden_size, config.intermediate_size, config.q_dim, config.kv_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def resolve_targets(target_modules: str | Sequence[str], available: Sequence[str] = KERNELS) -> tuple[str, ...]:
    """Kernel names matched by fnmatch ``target_modules``, in decoder order. Raises ValueError when a
    pattern matches nothing."""
    pats = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not pats:
        raise FieldError("target_modules", f"target_modules is empty; name at least one of {list(available)}")
    chosen = set()
    for pat in pats:
        if not isinstance(pat, str):
            raise FieldError("target_modules", f"target_modules entries must be strings (fnmatch patterns), got {pat!r}")
        hit = [k for k in available if fnmatch.fnmatchcase(k, pat)]
        if not hit:
            raise FieldError(
                "target_modules", f"target_modules pattern {pat!r} matches no module; patterns are fnmatch patterns over "
                f"the kernel names {list(available)} (e.g. 'q_proj', '*_proj', '[qkv]_proj')")
        chosen.update(hit)
    return tuple(k for k in available if k in chosen)


def make_spec(kind: str, config: ModelConfig, target_modules: str | Sequence[str] = DEFAULT_TARGETS,
              **hparams) -> tuple[AdapterSpec, dict]:
    """(spec, init-only options) from a kind, a config and hyper-parameters; validates everything."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; use one of {KINDS}")
    defaults = _DEFAULTS[kind]
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for adapter kind {kind!r}; "
                         f"accepted: {sorted(defaults)}")
    hp = {**defaults, **hparams}
    cfg = AdapterConfig(kind=kind, target_modules=target_modules, **hp)  # checks every value
    r = cfg.r
    alpha = float(r if cfg.alpha is None else cfg.alpha)
    shapes_all = _kernel_shapes(config)
    targets = resolve_targets(cfg.target_modules)
    shapes = tuple(shapes_all[t] for t in targets)
    for t, (din, dout) in zip(targets, shapes):
        if r > min(din, dout):
            raise FieldError("r", f"rank r={r} exceeds min(in, out) = {min(din, dout)} of {t} [{din}, {dout}]; "
                             f"choose r <= {min(din, dout)} or drop {t} from target_modules")
    kw = dict(kind=kind, targets=targets, shapes=shapes, num_layers=config.num_layers, r=r, alpha=alpha,
              use_rslora=bool(cfg.use_rslora))
    if kind == "lora":
        kw["dropout"] = float(cfg.dropout)
    if kind == "tinylora":
        kw.update(u=cfg.u, n_tie=cfg.n_tie, tie_mode=cfg.tie_mode, projections=cfg.projections)
    return AdapterSpec(**kw), {"init_std": float(cfg.init_std) if "init_std" in hp else 0.0}


def build(cfg: AdapterConfig, config: ModelConfig, params: Any, rng: jax.Array | None = None) -> Adapter | None:
    """The adapter an ``AdapterConfig`` describes, for ``params``; ``None`` for ``kind="none"`` (full-parameter
    training). ``rng`` defaults to ``jax.random.key(cfg.seed)``."""
    if cfg.kind == "none":
        return None
    rng = jax.random.key(cfg.seed) if rng is None else rng
    return init(cfg.kind, config, params, rng, target_modules=cfg.target_modules, **cfg.hparams())


def count_trainable(kind: str, config: ModelConfig, target_modules: str | Sequence[str] = DEFAULT_TARGETS,
                    **hparams) -> int:
    """Number of trainable scalars ``init`` would create, from the config alone (no weights, no SVD)."""
    spec, _ = make_spec(kind, config, target_modules, **hparams)
    if spec.kind == "lora":
        return sum(_lora.count(spec.num_layers, i, o, spec.r) for i, o in spec.shapes)
    if spec.kind == "lora_xs":
        return len(spec.targets) * spec.num_layers * spec.r * spec.r
    return spec.u * spec.num_groups


# ----------------------------------------------------------------------------------------------
# init / apply / merge
# ----------------------------------------------------------------------------------------------
def _check_params(params: Any, spec: AdapterSpec) -> dict:
    if not isinstance(params, dict) or "layers" not in params:
        raise ValueError("params must be the model's parameter tree (a dict with a 'layers' entry)")
    layers = params["layers"]
    for name, (din, dout) in zip(spec.targets, spec.shapes):
        if name not in layers:
            raise ValueError(f"params['layers'] has no {name!r}; the adapter targets {list(spec.targets)}")
        w = layers[name]
        if is_container(w):
            raise ValueError(f"params['layers'][{name!r}] is already an adapter container; pass the base "
                             "params (e.g. model.params), not the output of apply()")
        want = (spec.num_layers, din, dout)
        if tuple(w.shape) != want:
            raise ValueError(f"params['layers'][{name!r}] has shape {tuple(w.shape)}, but the adapter was "
                             f"built for {want}; was it made for another model?")
    return layers


def init(kind: str, config: ModelConfig, params: Any, rng: jax.Array,
         target_modules: str | Sequence[str] = DEFAULT_TARGETS, **hparams) -> Adapter:
    """A fresh adapter for ``params`` (the base model's tree).

    kind "lora": r=32, alpha=128, dropout=0.05, use_rslora=False (Tina). A Kaiming-uniform, B zeros.
    kind "lora_xs": r=64, alpha=None (= r, scale 1), use_rslora=False, init_std=1e-5 (R ~ N(0, init_std^2)).
    kind "tinylora": r=2, alpha=32, u=1, n_tie=1, tie_mode="tiled" | "structured",
        projections="shared_by_min_dim" | "per_module" | "shared", use_rslora=False, init_std=1e-5
        (v ~ N(0, init_std^2), P ~ N(0, 1)).
    The SVD kinds compute a truncated fp32 SVD of every targeted kernel, one layer at a time. Works
    under ``jax.eval_shape`` on ``param_shapes(config)`` (shape-only: no allocation, no SVD).
    """
    spec, opts = make_spec(kind, config, target_modules, **hparams)
    layers = _check_params(params, spec)
    L, r = spec.num_layers, spec.r
    trainable: dict = {}
    frozen: dict = {}
    keys = jax.random.split(rng, len(spec.targets) + 1)
    for t, ((din, dout), name) in enumerate(zip(spec.shapes, spec.targets)):
        k_a, k_p = jax.random.split(keys[t])
        if kind == "lora":
            trainable[name] = _lora.init_factors(k_a, L, din, dout, r)
            continue
        us, vt = _svd.truncated_svd(layers[name], r)
        frozen[name] = {"us": us, "vt": vt}
        if kind == "lora_xs":
            trainable[name] = {"core": opts["init_std"] * jax.random.normal(k_a, (L, r, r), jnp.float32)}
        elif spec.projections == "per_module":
            frozen[name]["p"] = jax.random.normal(k_p, (L, spec.u, r, r), jnp.float32)
        elif spec.projections == "shared_by_min_dim":  # one draw per smaller kernel dimension (svd.py)
            k_dim = jax.random.fold_in(jax.random.fold_in(rng, 0x7A11), min(din, dout))
            p = jax.random.normal(k_dim, (spec.u, r, r), jnp.float32)
            frozen[name]["p"] = jnp.broadcast_to(p, (L, spec.u, r, r))
    if kind == "tinylora":
        k_v, k_p = jax.random.split(keys[-1])
        trainable["v"] = opts["init_std"] * jax.random.normal(k_v, (spec.num_groups, spec.u), jnp.float32)
        if spec.projections == "shared":
            frozen["p"] = jax.random.normal(k_p, (spec.u, r, r), jnp.float32)
    return Adapter(trainable=trainable, frozen=frozen, spec=spec)


def cores(adapter: Adapter) -> dict[str, jax.Array]:
    """The r x r core of every targeted module, {name: fp32 [L, r, r]} (SVD kinds only)."""
    spec, tr, fr = adapter.spec, adapter.trainable, adapter.frozen
    if spec.kind == "lora_xs":
        return {name: tr[name]["core"] for name in spec.targets}
    if spec.kind == "tinylora":
        out = {}
        for name, index in zip(spec.targets, spec.tie_index):
            p = fr["p"] if spec.projections == "shared" else fr[name]["p"]
            out[name] = _svd.tinylora_core(tr["v"], p, index)
        return out
    raise ValueError(f"adapter kind {spec.kind!r} has no r x r cores")


def _as_key(rng: jax.Array) -> jax.Array:
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def containers(adapter: Adapter, bases: dict[str, Any], dropout_rng: jax.Array | None = None) -> dict:
    """{name: LowRank | SvdCore} for every target, around ``bases[name]`` ([L, in, out] or None)."""
    spec = adapter.spec
    if spec.kind == "lora":
        keys = [None] * len(spec.targets)
        if dropout_rng is not None and spec.dropout > 0.0:
            flat = jax.random.split(_as_key(dropout_rng), len(spec.targets) * spec.num_layers)
            keys = list(flat.reshape(len(spec.targets), spec.num_layers))
        return {name: _lora.container(bases.get(name), adapter.trainable[name], spec.scale, key, spec.dropout)
                for name, key in zip(spec.targets, keys)}
    cs = cores(adapter)
    return {name: _svd.container(bases.get(name), adapter.frozen[name]["us"], cs[name],
                                 adapter.frozen[name]["vt"], spec.scale)
            for name in spec.targets}


def apply(params: Any, adapter: Adapter, *, dropout_rng: jax.Array | None = None) -> Any:
    """``params`` with each targeted kernel replaced by its adapter container (differentiable in
    ``adapter.trainable``). ``dropout_rng`` (training only) turns on LoRA input dropout; it is ignored by
    the SVD kinds, which have no dropout. The result is accepted by ``tina_jax.forward`` and the sampler.
    """
    layers = _check_params(params, adapter.spec)
    new_layers = dict(layers)
    new_layers.update(containers(adapter, layers, dropout_rng))
    return {**params, "layers": new_layers}


def delta_weights(adapter: Adapter) -> dict[str, jax.Array]:
    """The dense update of every targeted kernel, {name: fp32 [L, in, out]} (full size: tests, merging)."""
    return {name: c.delta() for name, c in containers(adapter, {}).items()}


def merge(params: Any, adapter: Adapter) -> Any:
    """``params`` with the update folded into plain kernels: fp32 ``base + delta``, cast to the base dtype.

    Note: merging into bf16 weights rounds away updates far below the weights' bf16 resolution (typical
    of TinyLoRA's first steps); sample from ``apply(params, adapter)`` instead when that matters.
    """
    return materialize_tree(apply(params, adapter))


# ----------------------------------------------------------------------------------------------
# Introspection
# ----------------------------------------------------------------------------------------------
def _size(x) -> int:
    return int(math.prod(x.shape))


def _nbytes(x) -> int:
    return _size(x) * jnp.dtype(x.dtype).itemsize


def num_trainable(adapter: Adapter) -> int:
    """Number of trainable scalars (works on ``jax.eval_shape`` outputs too)."""
    return sum(_size(x) for x in jax.tree.leaves(adapter.trainable))


def summary(adapter: Adapter) -> str:
    """A human-readable table: kind, hyper-parameters, per-module shapes, trainable count and bytes."""
    spec = adapter.spec
    L = spec.num_layers
    head = f"{spec.kind} adapter: r={spec.r} alpha={spec.alpha:g} scale={spec.scale:g}"
    if spec.kind == "lora":
        head += f" dropout={spec.dropout:g} rslora={spec.use_rslora}"
    if spec.kind == "tinylora":
        head += (f" u={spec.u} n_tie={spec.n_tie} tie_mode={spec.tie_mode} "
                 f"projections={spec.projections} groups={spec.num_groups}")
    lines = [head, f"{'module':<10} {'base [L, in, out]':<22} {'trainable':<28} frozen"]
    fmt = lambda x: "x".join(map(str, x.shape))  # noqa: E731
    for name, (din, dout) in zip(spec.targets, spec.shapes):
        tr = adapter.trainable.get(name, {}) if spec.kind != "tinylora" else {}
        fr = adapter.frozen.get(name, {})
        tr_s = ", ".join(f"{k} {fmt(v)}" for k, v in tr.items()) or ("v (tied)" if spec.kind == "tinylora" else "-")
        fr_s = ", ".join(f"{k} {fmt(v)}" for k, v in fr.items()) or "-"
        lines.append(f"{name:<10} {f'[{L}, {din}, {dout}]':<22} {tr_s:<28} {fr_s}")
    if spec.kind == "tinylora":
        lines.append(f"shared: v {fmt(adapter.trainable['v'])}"
                     + (f", p {fmt(adapter.frozen['p'])}" if spec.projections == "shared" else ""))
    n = num_trainable(adapter)
    tb = sum(_nbytes(x) for x in jax.tree.leaves(adapter.trainable))
    fb = sum(_nbytes(x) for x in jax.tree.leaves(adapter.frozen))
    lines.append(f"trainable: {n:,} params ({tb:,} bytes); frozen: {fb:,} bytes; "
                 f"{len(spec.targets)} module types x {L} layers")
    return "\n".join(lines)
