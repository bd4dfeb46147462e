"""Run configuration: YAML recipes validated into typed, frozen dataclasses.

The run config is composed of the library's own configs (levanter's rule): ``rollout`` *is* a
``tina_jax.sampling.SamplingConfig``, ``adapter`` *is* a ``tina_jax.adapters.AdapterConfig``, and ``grpo``
(with ``grpo.loss``) is generated from the fields of ``tina_jax.rl.GrpoConfig`` (``LossConfig``), less the
fields the run derives from other sections (``group_size`` = ``rollout.num_samples``,
``loss.max_completion_length`` = ``rollout.max_new_tokens``); ``sft`` likewise from ``tina_jax.rl.sft.SftConfig``.
Each value is validated once, by the dataclass
that defines it; this module turns those errors into one-line ``ConfigError``s naming the YAML key, validates
its own sections (model, data, optim, train, ...) and keeps the rules that join sections (a mini-batch holds
whole groups, truncated importance sampling needs untruncated sampling, ...). ``grpo_config``,
``sampling_config`` and ``sft_config`` build the library configs the trainers run with.

Every key is checked: an unknown or misspelt key is an error naming the nearest valid key (Tina's
Dr.GRPO ablation silently ran plain GRPO because ``scale_reward`` was not ``scale_rewards``), and a key
renamed by the composition (``adapter.rank`` -> ``adapter.r``, see ``RENAMED``) names its new spelling.
Wrong types and impossible values are errors before anything is compiled.

    cfg = load_config("configs/smollm2_arith_cpu.yaml", overrides=["optim.lr=2e-5", "train.max_steps=10"])
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from tina_jax.adapters.core import AdapterConfig
from tina_jax.rl.grpo import GrpoConfig
from tina_jax.rl.losses import LossConfig
from tina_jax.rl.sft import SftConfig
from tina_jax.sampling import SamplingConfig
from tina_jax.validation import FieldError


class ConfigError(ValueError):
    """A configuration key, type or value is wrong; the message says where and how to fix it."""


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSection:
    source: str = "smollm2-135m-instruct"  # HF dir, .gguf file, registry name or hub id
    dtype: str | None = None  # parameter dtype; None: float32 on CPU, bfloat16 on GPU/TPU
    compute_dtype: str | None = None  # None: same as dtype
    remat: bool = False


@dataclasses.dataclass(frozen=True)
class DataSection:
    train: str = "synthetic:add"  # local .jsonl/.parquet, hub id, or synthetic:<task>
    train_split: str | None = None
    eval: str | None = "synthetic:add"
    eval_split: str | None = "test"
    n_train: int | None = None  # synthetic tasks: problems to draw; files: keep the first n (None = all)
    n_eval: int = 200
    prompt_recipe: str = "plain"
    field_map: dict[str, str] = dataclasses.field(default_factory=dict)
    required_fields: tuple[str, ...] = ("solution",)
    keep_fields: tuple[str, ...] = ()
    max_prompt_length: int = 512
    overlong: Literal["skip", "truncate_left"] = "skip"
    seed: int = 0
    num_epochs: int | None = None  # None: loop forever (max_steps decides); else the run ends with the data
    shuffle: bool = True  # a fresh permutation per epoch; false keeps file order (verl data.shuffle=False)


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def _section(lib: type, name: str, doc: str, *, derived: dict[str, str], retype: dict[str, tuple] | None = None,
             own: tuple = ()) -> type:
    """A section generated from the fields (names, types, defaults) of the library dataclass ``lib``, less the
    ``derived`` ones (field -> the key that sets it), with ``retype`` (field -> (type, default)) and the run's
    ``own`` fields first. ``lib`` checks the values when ``grpo_config`` / ``sft_config`` build it (also at
    load time, from ``_check_values``)."""
    hints, retype = typing.get_type_hints(lib), retype or {}
    fields = list(own)
    for f in dataclasses.fields(lib):
        if f.name not in derived:
            tp, default = retype.get(f.name, (hints[f.name], f.default))
            fields.append((f.name, tp, dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(name, fields, frozen=True, namespace={"__doc__": doc})
    cls.__module__, cls.library, cls.derived = __name__, lib, derived
    return cls


LossSection = _section(
    LossConfig, "LossSection", "grpo.loss: the fields of ``tina_jax.rl.LossConfig``; microbatch_rows None = "
    "rollout.num_samples (one block per group, Open-RS), max_completion_length = rollout.max_new_tokens.",
    derived={"max_completion_length": "rollout.max_new_tokens"})

GrpoSection = _section(
    GrpoConfig, "GrpoSection", "grpo: the rollout schedule (prompts_per_step, num_iterations, mini_batches) and "
    "the fields of ``tina_jax.rl.GrpoConfig`` (one optimizer update), group_size = rollout.num_samples. "
    "logprob_temperature: a number, or 'sampling' = ``SamplingConfig.scoring_temperature`` of rollout.",
    derived={"group_size": "rollout.num_samples"},
    retype={"loss": (LossSection, LossSection()),
            "logprob_temperature": (float | Literal["sampling"], "sampling"),
            "share_prompts": (bool, True)},  # run each prompt once for its G completions (same result, fewer FLOPs)
    own=(("prompts_per_step", int, dataclasses.field(default=8)),  # prompts per rollout (x G completions)
         ("num_iterations", int, dataclasses.field(default=1)),  # optimizer passes over each rollout batch
         ("mini_batches", int, dataclasses.field(default=1))))  # optimizer steps per pass (the batch split)


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-6
    schedule: Literal["cosine_with_min_lr", "constant", "constant_with_warmup"] = "cosine_with_min_lr"
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.1
    schedule_steps: int | None = None  # steps the schedule spans (Tina: 2x the steps run); None = max_steps
    schedule_unit: Literal["rollout", "update"] = "rollout"  # one schedule step per rollout (verl) or update
    warmup_steps: int | None = None  # overrides warmup_ratio (HF: ceil(ratio x N); verl: int(ratio x N))
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0


@dataclasses.dataclass(frozen=True)
class TrainSection:
    max_steps: int = 100
    seed: int = 0
    run_dir: str = "runs/default"
    eval_every: int = 10  # 0 = never
    eval_samples: int = 1  # sampled completions per eval problem (besides greedy)
    eval_temperature: float = 1.0
    eval_max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    eval_batch_size: int = 64
    save_every: int = 10
    keep_last: int = 3
    log_every: int = 1
    sample_every: int = 10  # log example completions every N steps (0 = never)
    plot: bool = True
    tensorboard: bool = True
    cost_per_device_hour: float = 0.0  # $ per device-hour for the cost line (Tina: $1 per L40S-hour)
    time_limit_minutes: float | None = None  # stop cleanly (with a checkpoint) after this wall time
    # JAX's persistent compilation cache (tina_jax.runtime): "auto" = $TINA_JAX_CACHE/xla, a directory, or
    # null (off). A later run of the same shapes loads its compiled programs instead of compiling them.
    compilation_cache: str | None = "auto"


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Benchmark evaluation during and after training (``tina_jax.evaluation``); logged as
    ``eval/<benchmark>/<metric>`` and written under ``<run_dir>/eval/step_<N>/``. Independent of the
    held-out evaluation of ``data.eval`` (``train.eval_every``)."""

    benchmarks: tuple[str, ...] = ()  # e.g. [aime24, amc23, math500]; empty = none
    protocol: str = "greedy"  # lighteval | gsm8k_strict | kk | greedy
    limit: int | None = None  # first N problems of each benchmark
    every: int = 0  # also every N training steps (0 = only at the end)
    at_end: bool = True  # evaluate the final weights when the run ends
    samples: int | None = None  # None: the protocol's default
    seeds: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


SftSection = _section(
    SftConfig, "SftSection", "sft: supervised fine-tuning (``algorithm: sft``, ``tina_jax.rl.sft``): the fields of "
    "``SftConfig`` (micro_batch_size, logprob_chunk) and the run's batches; data.train records with ``messages``, "
    "``prompt``/``completion`` or the prompt recipe's field + ``completion``.",
    derived={},
    own=(("batch_size", int, dataclasses.field(default=8)),  # sequences per optimizer step
         ("max_length", int, dataclasses.field(default=1024)),  # tokens per sequence (prompt + completion), per packed row
         ("overlong", Literal["skip", "truncate"], dataclasses.field(default="skip")),  # longer: dropped or cut
         ("pack", bool, dataclasses.field(default=False)),  # pack a step's sequences into rows of max_length
         ("completion_field", str, dataclasses.field(default="completion"))))


@dataclasses.dataclass(frozen=True)
class InitFromSection:
    """Start from another run's weights (two-stage pipelines: SFT, then RL). ``run``: a run directory
    (its checkpoint's full weights, or base + adapter merged); the new run's adapter starts fresh on top."""

    run: str | None = None
    checkpoint: str = "last"  # last | best | a step number


@dataclasses.dataclass(frozen=True)
class MeshSection:
    shape: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor); one entry may be -1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelSection = ModelSection()
    adapter: AdapterConfig = AdapterConfig()  # tina_jax.adapters
    data: DataSection = DataSection()
    rewards: tuple[RewardSpec, ...] = (RewardSpec("accuracy", 1.0),)
    rollout: SamplingConfig = SamplingConfig(max_new_tokens=48, num_samples=8)  # tina_jax.sampling
    grpo: GrpoSection = GrpoSection()  # tina_jax.rl.GrpoConfig / LossConfig
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    mesh: MeshSection = MeshSection()
    algorithm: Literal["grpo", "sft"] = "grpo"
    sft: SftSection = SftSection()
    init_from: InitFromSection = InitFromSection()

    def to_dict(self) -> dict:
        return _to_plain(self)


# ------------------------------------------------------------------------------------------------
# The library configs the trainer runs with (derived values filled in)
# ------------------------------------------------------------------------------------------------
def logprob_temperature(c: RunConfig) -> float:
    """The T of the trainer's logprobs, log_softmax(logits / T): ``grpo.logprob_temperature``, or for
    ``sampling`` the rollout's ``SamplingConfig.scoring_temperature`` (the sampling temperature; 1 for greedy)."""
    t = c.grpo.logprob_temperature
    return c.rollout.scoring_temperature if t == "sampling" else float(t)


def _build(lib: type, section: Any, where: str, **derived) -> Any:
    """``lib`` from the same-named fields of ``section`` and the ``derived`` values; a FieldError becomes a
    ConfigError naming the YAML key (the key a derived field comes from, for those)."""
    names = {f.name for f in dataclasses.fields(lib)}
    kwargs = {k: getattr(section, k) for k in names if k not in derived}
    try:
        return lib(**kwargs, **derived)
    except FieldError as e:
        key = section.derived.get(e.field, f"{where}.{e.field}")
        raise ConfigError(f"{key}: {e.detail}" + (f" ({lib.__name__}.{e.field})" if e.field in section.derived
                                                  else "")) from None


def grpo_config(c: RunConfig) -> GrpoConfig:
    """The ``GrpoConfig`` of one update: the grpo section, group_size = rollout.num_samples, the loss's
    max_completion_length = rollout.max_new_tokens (and microbatch_rows, when null, = rollout.num_samples),
    logprob_temperature from ``logprob_temperature``."""
    g, r = c.grpo, c.rollout
    rows = g.loss.microbatch_rows
    if g.loss.aggregation == "microbatch_token_mean" and rows is None:
        rows = r.num_samples
    loss = _build(LossConfig, g.loss, "grpo.loss", max_completion_length=r.max_new_tokens, microbatch_rows=rows)
    return _build(GrpoConfig, g, "grpo", loss=loss, group_size=r.num_samples,
                  logprob_temperature=logprob_temperature(c))


def sampling_config(c: RunConfig, **changes) -> SamplingConfig:
    """The rollout's ``SamplingConfig`` with the prompt limit of data.max_prompt_length (stop and pad ids, when
    null, are the tokenizer's: ``tina_jax.sampling.generate``), and ``changes`` (e.g. num_samples=1)."""
    return c.rollout.replace(max_prompt_length=c.data.max_prompt_length, **changes)


def sft_config(c: RunConfig) -> SftConfig:
    """The ``SftConfig`` of one supervised step (the sft section's fields of it)."""
    return _build(SftConfig, c.sft, "sft")


def updates_per_rollout(c: RunConfig) -> int:
    """Optimizer updates after each rollout: grpo.num_iterations passes x grpo.mini_batches."""
    return c.grpo.num_iterations * c.grpo.mini_batches


# ------------------------------------------------------------------------------------------------
# Validation: this module's sections, and the rules that join sections
# ------------------------------------------------------------------------------------------------
def _check_values(c: RunConfig) -> None:
    def req(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    r, g, o, t, d = c.rollout, c.grpo, c.optim, c.train, c.data
    req(r.max_prompt_length is None, "rollout.max_prompt_length",
        f"leave it null: the prompt limit is data.max_prompt_length ({d.max_prompt_length})")
    req(g.prompts_per_step >= 1, "grpo.prompts_per_step", f"must be >= 1, got {g.prompts_per_step}")
    req(g.num_iterations >= 1, "grpo.num_iterations", f"must be >= 1, got {g.num_iterations}")
    req(g.mini_batches >= 1, "grpo.mini_batches", f"must be >= 1, got {g.mini_batches}")
    rows = g.prompts_per_step * r.num_samples
    req(rows % g.mini_batches == 0, "grpo.mini_batches",
        f"{g.mini_batches} does not divide the {rows} completions of a step")
    mb = rows // g.mini_batches
    req(g.micro_batch_size is None or g.micro_batch_size < 1 or mb % g.micro_batch_size == 0,
        "grpo.micro_batch_size", f"{g.micro_batch_size} must divide the mini-batch of {mb} completions")
    gc = grpo_config(c)  # GrpoConfig and LossConfig check their values (rollout.num_samples >= 2, ...)
    if g.share_prompts:
        req(mb % r.num_samples == 0, "grpo.mini_batches",
            f"with share_prompts each mini-batch must hold whole groups of {r.num_samples}")
    if gc.loss.aggregation == "microbatch_token_mean":
        blk = gc.loss.microbatch_rows
        req(mb % blk == 0, "grpo.loss.microbatch_rows",
            f"{blk} rows per block must divide the mini-batch of {mb} completions")
    if gc.loss.tis_cap is not None:
        # TIS weighs by trainer / sampler probability of the same token: both must describe one distribution.
        req(r.top_p >= 1.0 and r.top_k == 0, "grpo.loss.tis_cap",
            f"truncated importance sampling compares the trainer's full-softmax logprobs with the sampler's, "
            f"which are those of the top-p/top-k truncated distribution (rollout.top_p={r.top_p}, "
            f"top_k={r.top_k}): every weight would be <= 1. Set rollout.top_p=1.0 and rollout.top_k=0, "
            "or grpo.loss.tis_cap=null")
        req(r.temperature > 0 and abs(gc.logprob_temperature - r.temperature) < 1e-12, "grpo.loss.tis_cap",
            f"truncated importance sampling needs grpo.logprob_temperature equal to the sampling temperature "
            f"({r.temperature}), got {g.logprob_temperature}: set grpo.logprob_temperature=sampling")
    req(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    req(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    req(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    req(o.warmup_steps is None or o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    req(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0 or null")
    req(o.schedule_steps is None or o.schedule_steps >= t.max_steps, "optim.schedule_steps",
        f"must be >= train.max_steps ({t.max_steps}) or null")
    req(t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}")
    req(t.save_every >= 1, "train.save_every", f"must be >= 1 (save a checkpoint every N steps), got {t.save_every}")
    req(t.eval_every >= 0, "train.eval_every", f"must be >= 0 (0 = never), got {t.eval_every}")
    req(t.sample_every >= 0, "train.sample_every", f"must be >= 0 (0 = never), got {t.sample_every}")
    req(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    req(t.eval_samples >= 0, "train.eval_samples", f"must be >= 0, got {t.eval_samples}")
    req(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {t.eval_batch_size}")
    req(t.eval_max_new_tokens is None or t.eval_max_new_tokens >= 1, "train.eval_max_new_tokens", "must be >= 1 or null")
    req(t.time_limit_minutes is None or t.time_limit_minutes > 0, "train.time_limit_minutes", "must be > 0 or null")
    req(t.compilation_cache is None or (isinstance(t.compilation_cache, str) and t.compilation_cache.strip() != ""),
        "train.compilation_cache", "must be auto, a directory or null")
    req(t.cost_per_device_hour >= 0, "train.cost_per_device_hour", "must be >= 0")
    req(d.n_eval >= 0, "data.n_eval", f"must be >= 0, got {d.n_eval}")
    req(d.n_train is None or d.n_train >= 1, "data.n_train", f"must be >= 1 or null, got {d.n_train}")
    req(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    req(d.max_prompt_length >= 1, "data.max_prompt_length", "must be >= 1")
    req(len(c.rewards) >= 1, "rewards", "at least one reward is needed")
    from tina_jax import rewards as rewards_lib

    known = list(rewards_lib.REWARD_NAMES)
    for i, spec in enumerate(c.rewards):
        if spec.name not in known:
            near = difflib.get_close_matches(spec.name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known rewards: {sorted(known)}"
            raise ConfigError(f"rewards[{i}].name: unknown reward {spec.name!r}{hint}")
        try:
            rewards_lib.check_params(spec.name, spec.params)
        except ValueError as e:
            raise ConfigError(f"rewards[{i}].params: {e}") from None
        req(math.isfinite(spec.weight), f"rewards[{i}].weight", f"must be a finite number, got {spec.weight}")
    _check_eval(c.eval)
    sf = c.sft
    req(sf.batch_size >= 1, "sft.batch_size", f"must be >= 1, got {sf.batch_size}")
    req(sf.max_length >= 2, "sft.max_length", f"must be >= 2, got {sf.max_length}")
    sft_config(c)  # SftConfig checks micro_batch_size and logprob_chunk
    if sf.micro_batch_size is not None and not sf.pack:
        req(sf.micro_batch_size >= 1 and sf.batch_size % sf.micro_batch_size == 0, "sft.micro_batch_size",
            f"{sf.micro_batch_size} must divide sft.batch_size ({sf.batch_size})")
    ck = c.init_from.checkpoint
    req(ck in ("last", "best") or ck.isdigit(), "init_from.checkpoint",
        f"must be last, best or a step number, got {ck!r}")
    if any(m <= 0 for m in c.mesh.shape if m != -1) or list(c.mesh.shape).count(-1) > 1:
        raise ConfigError(f"mesh.shape: entries must be positive (one may be -1), got {c.mesh.shape}")


def _check_eval(e: EvalSection) -> None:
    from tina_jax.evaluation import get_benchmark, get_protocol

    try:
        proto = get_protocol(e.protocol)
        for i, b in enumerate(e.benchmarks):
            fam = get_benchmark(b).family
            if fam not in proto.benchmarks:
                raise ValueError(f"benchmarks[{i}]: protocol {e.protocol!r} does not apply to {b!r} ({fam})")
        proto.replace(samples=e.samples, seeds=e.seeds, max_new_tokens=e.max_new_tokens,
                      temperature=e.temperature, top_p=e.top_p).check()
    except ValueError as err:
        raise ConfigError(f"eval: {err}") from None
    if e.limit is not None and e.limit < 1:
        raise ConfigError(f"eval.limit: must be >= 1 or null, got {e.limit}")
    if e.every < 0:
        raise ConfigError(f"eval.every: must be >= 0 (0 = only at the end), got {e.every}")


# ------------------------------------------------------------------------------------------------
# Keys renamed when the run config became the library's configs (an error names the new key; a run
# directory's config.yaml written before is read with them renamed: ``upgrade_keys``)
# ------------------------------------------------------------------------------------------------
RENAMED = {
    "adapter.rank": "adapter.r",
    "rollout.num_generations": "rollout.num_samples",
    **{f"grpo.{k}": f"grpo.loss.{k}" for k in ("aggregation", "clip_eps_low", "clip_eps_high", "beta",
                                                "kl_estimator", "tis_cap", "dual_clip")},
    "grpo.aggregation_rows": "grpo.loss.microbatch_rows",
}


def upgrade_keys(data: dict) -> dict:
    """``data`` with the keys of ``RENAMED`` moved to their new names (for configs saved before the rename)."""
    data = _to_plain(data)
    for old, new in RENAMED.items():
        (s_old, k_old), (s_new, k_new) = old.rsplit(".", 1), new.rsplit(".", 1)
        sec = data.get(s_old)
        if isinstance(sec, dict) and k_old in sec:
            node = data
            for part in s_new.split("."):
                node = node.setdefault(part, {})
            node[k_new] = sec.pop(k_old)
    return data


# ------------------------------------------------------------------------------------------------
# Generic dataclass <- dict conversion with precise errors
# ------------------------------------------------------------------------------------------------
def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}? " if near else ""


def _convert(tp: Any, value: Any, where: str, base: Any = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}; {_nearest(str(value), [str(a) for a in args])}".rstrip("; "))
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where, base)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{where}: expected a number, got {value!r}") from None
            else:
                raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf / .nan pass YAML but poison a run (an inf lr saved NaN weights)
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _from_dict(cls, data: Any, where: str, base: Any = None):
    """``cls`` from a mapping; keys not given keep the values of ``base`` (the enclosing dataclass's default
    instance: ``RunConfig.rollout``'s max_new_tokens=48 and num_samples=8), else the class defaults."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            if path in RENAMED:
                raise ConfigError(f"config key {path!r} is now {RENAMED[path]!r} (the run config uses the library's "
                                  "names; see the README's configuration section)")
            moved = {old.rsplit(".", 1)[1]: new for old, new in RENAMED.items() if old.rsplit(".", 1)[0] == where}
            near = difflib.get_close_matches(str(key), list(fields) + list(moved), n=1, cutoff=0.5)
            hint = f"did you mean {moved.get(near[0], near[0])!r}? " if near else ""
            raise ConfigError(f"unknown config key {path!r}; {hint}"
                              f"valid keys{' of ' + where if where else ''}: {', '.join(fields)}")
        if base is not None:
            default = getattr(base, key)
        else:
            f = fields[key]
            default = f.default if f.default is not dataclasses.MISSING else None
        kwargs[key] = _convert(hints[key], value, path, default if dataclasses.is_dataclass(default) else None)
    if base is not None:
        kwargs = {**{n: getattr(base, n) for n in fields if fields[n].init}, **kwargs}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except FieldError as e:  # a library dataclass rejects a value: name the YAML key
        raise ConfigError(f"{where + '.' if where else ''}{e.field}: {e.detail}") from None
    except ValueError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def apply_overrides(data: dict, overrides: list[str], strict: bool = False) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in order. A key given twice
    is an error with ``strict`` (the command line), else a logged warning (the last one wins)."""
    data = _to_plain(data)
    seen: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        if key.strip() in seen:
            msg = f"override {key.strip()!r} is given twice ({seen[key.strip()]!r} and {item!r})"
            if strict:
                raise ConfigError(msg + "; keep one")
            logging.getLogger("tina_jax.config").warning("%s: the last one wins", msg)
        seen[key.strip()] = item
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it, e.g. key='value'") from None
        _set(data, key.strip(), value, f"override {item!r}")
    return data


def _set(data: dict, key: str, value: Any, what: str) -> None:
    """``data[a][b][c] = value`` for the dotted ``key`` a.b.c (sections created as needed)."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.setdefault(p, {}), dict):
            raise ConfigError(f"{what}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def from_dict(data: dict, schema: type = None) -> Any:
    """Validate a nested dict into a RunConfig (unknown keys, types and values are checked), or into another
    frozen dataclass ``schema`` (its keys and types checked here, its values by its own ``__post_init__``)."""
    cfg = _from_dict(schema or RunConfig, data, "")
    if schema in (None, RunConfig):
        _check_values(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                strict_overrides: bool = False, *, schema: type = None, updates: dict | None = None,
                upgrade: bool = False) -> Any:
    """Read a YAML recipe (or the defaults when ``path`` is None), set ``updates`` ({dotted key: value}, e.g. a
    command line's typed flags), apply dotted overrides (``strict_overrides``: a key given twice is an error, as on
    the command line) and validate into a RunConfig, or into ``schema`` (another frozen dataclass, e.g. the
    settings of ``launch/eval.py``). ``upgrade``: rename the keys of ``RENAMED`` (a run directory's
    ``config.yaml`` written before the rename) instead of rejecting them."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of " + (
                "sections" if schema in (None, RunConfig) else "the keys: " + ", ".join(
                    f.name for f in dataclasses.fields(schema))))
    data = upgrade_keys(data) if upgrade else _to_plain(data)
    try:
        for key, value in (updates or {}).items():
            _set(data, key, value, f"{key}={value!r}")
        return from_dict(apply_overrides(data, overrides or [], strict=strict_overrides), schema)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
