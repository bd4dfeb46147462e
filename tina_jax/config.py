"""Run configuration: YAML recipes validated into typed, frozen dataclasses.

Every key is checked: an unknown or misspelt key is an error naming the nearest valid key (Tina's
Dr.GRPO ablation silently ran plain GRPO because ``scale_reward`` was not ``scale_rewards``). Wrong
types and impossible values are errors before anything is compiled.

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
class AdapterSection:
    kind: Literal["lora", "lora_xs", "tinylora", "none"] = "lora"  # none = full-parameter training
    rank: int = 32
    alpha: float = 128.0
    dropout: float = 0.0
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    u: int = 1  # TinyLoRA: trainable values per tie group
    n_tie: int = 1  # TinyLoRA: modules sharing one v
    tie_mode: Literal["tiled", "structured"] = "tiled"
    # TinyLoRA's random P: shared_by_min_dim (the authors' code: reseeding before each module's SVD gives
    # modules with the same smaller kernel dimension the same P), per_module (the paper's text) or shared
    projections: Literal["shared_by_min_dim", "per_module", "shared"] = "shared_by_min_dim"
    seed: int = 0


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


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    num_generations: int = 8  # G
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # merged: adapters folded into the kernels for sampling (plain matmuls; the authors' vLLM rollouts);
    # factored: x K + c (x A) B inside each decode step, the trainer's numerics (bf16 keeps tiny updates)
    adapter_decoding: Literal["merged", "factored"] = "merged"
    # dtype of the merged kernels (merged decoding); None: the base weights' dtype
    merge_dtype: Literal["float32", "bfloat16", "float16"] | None = None


@dataclasses.dataclass(frozen=True)
class GrpoSection:
    prompts_per_step: int = 8
    advantage: Literal["grpo", "drgrpo", "rloo"] = "grpo"
    adv_eps: float = 1e-4
    # token_mean: one token mean over the optimizer step (DAPO); microbatch_token_mean: token mean within
    # each block of aggregation_rows rows, mean over blocks (Open-RS's TRL, later "bnpo"); seq_mean_token_mean:
    # mean over sequences of each one's token mean (Tina's TRL 0.15.2); seq_sum_const: sum / (B x L) (Dr.GRPO)
    aggregation: Literal["token_mean", "microbatch_token_mean", "seq_mean_token_mean", "seq_sum_const"] = "token_mean"
    aggregation_rows: int | None = None  # microbatch_token_mean's block (rows); None = rollout.num_generations
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    beta: float = 0.0
    kl_estimator: Literal["k1", "k3"] = "k3"
    tis_cap: float | None = None
    dual_clip: float | None = None  # dual-clip PPO c (> 1): for A < 0 the ratio is capped at c (verl: 3)
    num_iterations: int = 1  # optimizer passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass (the rollout batch split in this many)
    micro_batch_size: int | None = None  # rows per gradient-accumulation chunk (None: whole mini-batch)
    logprob_chunk: int = 64  # sequence chunk for the lm_head/log-softmax (no [B, T, V] logits)
    share_prompts: bool = True  # run each prompt once for its G completions (same result, fewer FLOPs)
    # Policy/reference/old logprobs use log_softmax(logits / T) with T this number, or "sampling" =
    # rollout.temperature (verl, TRL >= 0.16). Tina's TRL 0.15.2 and Open-RS's TRL (2025-02-25): 1.0.
    logprob_temperature: float | Literal["sampling"] = "sampling"


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


@dataclasses.dataclass(frozen=True)
class SftSection:
    """Supervised fine-tuning (``algorithm: sft``, ``tina_jax.rl.sft``): data.train records with
    ``messages``, ``prompt``/``completion`` or the prompt recipe's field + ``completion``."""

    batch_size: int = 8  # sequences per optimizer step
    micro_batch_size: int | None = None  # rows per gradient-accumulation chunk (None: the whole batch)
    max_length: int = 1024  # tokens per sequence (prompt + completion), and per packed row
    overlong: Literal["skip", "truncate"] = "skip"  # longer sequences: dropped or cut (counted either way)
    pack: bool = False  # pack a step's sequences into rows of max_length (same update, fewer pad tokens)
    completion_field: str = "completion"
    logprob_chunk: int = 64


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
    adapter: AdapterSection = AdapterSection()
    data: DataSection = DataSection()
    rewards: tuple[RewardSpec, ...] = (RewardSpec("accuracy", 1.0),)
    rollout: RolloutSection = RolloutSection()
    grpo: GrpoSection = GrpoSection()
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
# Validation of values (beyond types)
# ------------------------------------------------------------------------------------------------
def logprob_temperature(c: RunConfig) -> float:
    """The T of the trainer's logprobs, log_softmax(logits / T) (``grpo.logprob_temperature``)."""
    t = c.grpo.logprob_temperature
    if t == "sampling":
        return c.rollout.temperature if c.rollout.temperature > 0 else 1.0
    return float(t)


def _check_values(c: RunConfig) -> None:
    def req(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    r, g, o, t, a, d = c.rollout, c.grpo, c.optim, c.train, c.adapter, c.data
    req(r.num_generations >= 2, "rollout.num_generations",
        f"must be >= 2 (GRPO compares completions within a group), got {r.num_generations}")
    req(r.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    req(r.temperature >= 0, "rollout.temperature", f"must be >= 0, got {r.temperature}")
    req(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    req(r.top_k >= 0, "rollout.top_k", f"must be >= 0 (0 = off), got {r.top_k}")
    req(g.prompts_per_step >= 1, "grpo.prompts_per_step", f"must be >= 1, got {g.prompts_per_step}")
    req(g.num_iterations >= 1, "grpo.num_iterations", f"must be >= 1, got {g.num_iterations}")
    req(g.mini_batches >= 1, "grpo.mini_batches", f"must be >= 1, got {g.mini_batches}")
    rows = g.prompts_per_step * r.num_generations
    req(rows % g.mini_batches == 0, "grpo.mini_batches",
        f"{g.mini_batches} does not divide the {rows} completions of a step")
    if g.micro_batch_size is not None:
        mb = rows // g.mini_batches
        req(g.micro_batch_size >= 1 and mb % g.micro_batch_size == 0, "grpo.micro_batch_size",
            f"{g.micro_batch_size} must divide the mini-batch of {mb} completions")
    if g.share_prompts:
        req((rows // g.mini_batches) % r.num_generations == 0, "grpo.mini_batches",
            f"with share_prompts each mini-batch must hold whole groups of {r.num_generations}")
        req(g.micro_batch_size is None or g.micro_batch_size % r.num_generations == 0, "grpo.micro_batch_size",
            f"with share_prompts it must be a multiple of rollout.num_generations ({r.num_generations}); "
            "or set grpo.share_prompts=false")
    req(g.clip_eps_low >= 0 and g.clip_eps_high >= 0, "grpo.clip_eps_low/high", "must be >= 0")
    req(g.beta >= 0, "grpo.beta", f"must be >= 0, got {g.beta}")
    req(g.tis_cap is None or g.tis_cap > 0, "grpo.tis_cap", f"must be > 0 or null, got {g.tis_cap}")
    req(g.dual_clip is None or g.dual_clip > 1, "grpo.dual_clip", f"must be > 1 or null, got {g.dual_clip}")
    if g.aggregation == "microbatch_token_mean":
        blk = g.aggregation_rows or r.num_generations
        req(blk >= 1 and (rows // g.mini_batches) % blk == 0, "grpo.aggregation_rows",
            f"{blk} rows per block must divide the mini-batch of {rows // g.mini_batches} completions")
    req(g.logprob_chunk >= 1, "grpo.logprob_chunk", "must be >= 1")
    req(g.logprob_temperature == "sampling" or g.logprob_temperature > 0, "grpo.logprob_temperature",
        f"must be > 0 or 'sampling', got {g.logprob_temperature}")
    if g.tis_cap is not None:
        # TIS weighs by trainer / sampler probability of the same token: both must describe one distribution.
        req(r.top_p >= 1.0 and r.top_k == 0, "grpo.tis_cap",
            f"truncated importance sampling compares the trainer's full-softmax logprobs with the sampler's, "
            f"which are those of the top-p/top-k truncated distribution (rollout.top_p={r.top_p}, "
            f"top_k={r.top_k}): every weight would be <= 1. Set rollout.top_p=1.0 and rollout.top_k=0, "
            "or grpo.tis_cap=null")
        req(r.temperature > 0 and abs(logprob_temperature(c) - r.temperature) < 1e-12, "grpo.tis_cap",
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
    req(t.cost_per_device_hour >= 0, "train.cost_per_device_hour", "must be >= 0")
    req(g.adv_eps >= 0, "grpo.adv_eps", f"must be >= 0, got {g.adv_eps}")
    req(d.n_eval >= 0, "data.n_eval", f"must be >= 0, got {d.n_eval}")
    req(d.n_train is None or d.n_train >= 1, "data.n_train", f"must be >= 1 or null, got {d.n_train}")
    req(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    req(a.rank >= 1, "adapter.rank", f"must be >= 1, got {a.rank}")
    req(a.u >= 1, "adapter.u", f"must be >= 1, got {a.u}")
    req(a.n_tie >= 1, "adapter.n_tie", f"must be >= 1, got {a.n_tie}")
    req(0 <= a.dropout < 1, "adapter.dropout", f"must be in [0, 1), got {a.dropout}")
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
    req(sf.logprob_chunk >= 1, "sft.logprob_chunk", "must be >= 1")
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
# Generic dataclass <- dict conversion with precise errors
# ------------------------------------------------------------------------------------------------
def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean {near[0]!r}? " if near else ""


def _convert(tp: Any, value: Any, where: str) -> Any:
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
        return _from_dict(tp, value, where)
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


def _from_dict(cls, data: Any, where: str):
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
            raise ConfigError(
                f"unknown config key {path!r}; {_nearest(str(key), list(fields))}"
                f"valid keys{' of ' + where if where else ''}: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], value, path)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key(s) {missing}")
    return cls(**kwargs)


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
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it, e.g. key='value'") from None
    return data


def from_dict(data: dict) -> RunConfig:
    """Validate a nested dict into a RunConfig (unknown keys, types and values are checked)."""
    cfg = _from_dict(RunConfig, data, "")
    _check_values(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                strict_overrides: bool = False) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply dotted overrides
    (``strict_overrides``: a key given twice is an error, as on the command line)."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    try:
        return from_dict(apply_overrides(data, overrides or [], strict=strict_overrides))
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
