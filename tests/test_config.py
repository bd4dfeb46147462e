"""Run-config validation: unknown keys name the nearest valid key, types and values are checked early."""
from __future__ import annotations

from pathlib import Path

import pytest

from tina_jax.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_validates_and_cites_its_source(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    head = path.read_text().split("\n", 1)[0]
    assert head.startswith("# "), f"{path.name} must start with a comment citing its source"


def test_defaults_validate():
    assert load_config(None).rollout.num_samples == 8


@pytest.mark.parametrize("data, match", [
    ({"grpo": {"loss": {"aggregaton": "token_mean"}}},
     r"unknown config key 'grpo\.loss\.aggregaton'; did you mean 'aggregation'"),
    ({"grpo": {"aggregaton": "token_mean"}}, r"unknown config key 'grpo\.aggregaton'; did you mean 'grpo\.loss\.aggregation'"),
    ({"adapter": {"rnak": 4}}, r"unknown config key 'adapter\.rnak'; did you mean 'adapter\.r'"),
    ({"optim": {"scale_reward": False}}, r"unknown config key 'optim\.scale_reward'"),
    ({"rolout": {}}, r"unknown config key 'rolout'; did you mean 'rollout'"),
    ({"rewards": [{"name": "accuracy", "wieght": 2}]}, r"rewards\[0\]\.wieght.*did you mean 'weight'"),
])
def test_unknown_keys_name_the_nearest_valid_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(data)


@pytest.mark.parametrize("data, match", [
    ({"rollout": {"num_samples": "eight"}}, r"rollout\.num_samples: expected an integer"),
    ({"rollout": {"num_samples": 1}}, r"rollout\.num_samples: must be >= 2"),
    ({"rollout": {"top_p": 1.5}}, r"rollout\.top_p: must be in \(0, 1\]"),
    ({"grpo": {"loss": {"aggregation": "mean"}}}, r"grpo\.loss\.aggregation: 'mean' is not one of"),
    ({"grpo": {"mini_batches": 3}}, r"grpo\.mini_batches: 3 does not divide the 64 completions"),
    ({"grpo": {"micro_batch_size": 5}}, r"grpo\.micro_batch_size: 5 must divide"),
    ({"grpo": {"micro_batch_size": 4}}, r"grpo\.micro_batch_size: must hold whole groups with share_prompts"),
    ({"adapter": {"kind": "dora"}}, r"adapter\.kind: 'dora' is not one of"),
    ({"adapter": {"u": 0}}, r"adapter\.u: .*must be an integer >= 1"),
    ({"train": {"max_steps": 0}}, r"train\.max_steps: must be >= 1"),
    ({"rewards": [{"name": "acuracy"}]}, r"rewards\[0\]\.name: unknown reward 'acuracy'; did you mean 'accuracy'"),
    ({"mesh": {"shape": [2, 2]}}, r"mesh\.shape: expected 3 entries"),
    ({"model": {"remat": "yes"}}, r"model\.remat: expected true/false"),
])
def test_wrong_types_and_impossible_values(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(data)


def test_overrides_and_yaml_floats(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-6\n")  # YAML 1.1 reads this as a string: accepted as a float
    cfg = load_config(p, ["optim.lr=2e-5", "train.max_steps=7", "adapter.target_modules=[q_proj, v_proj]"])
    assert cfg.optim.lr == 2e-5 and cfg.train.max_steps == 7
    assert cfg.adapter.target_modules == ("q_proj", "v_proj")
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(p, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'optim\.lrr'"):
        load_config(p, ["optim.lrr=1"])
    assert apply_overrides({}, ["a.b.c=3"]) == {"a": {"b": {"c": 3}}}
    c = load_config(p, ["train.max_steps=7"], updates={"optim.b1": 0.5, "train.max_steps": 3})  # overrides win
    assert (c.optim.lr, c.optim.b1, c.train.max_steps) == (1e-6, 0.5, 7)


def test_batch_not_divisible_by_mesh_is_an_early_error():
    from tina_jax.sharding import check_batch_divides

    class FakeMesh:
        shape = {"data": 3, "fsdp": 1, "tensor": 1}

    with pytest.raises(ValueError, match=r"rollout mini-batch.*64.*not divisible by data x fsdp = 3"):
        check_batch_divides(64, FakeMesh(), "rollout mini-batch (completions)")


def test_logprob_temperature_per_recipe():
    """grpo.logprob_temperature: 'sampling' follows rollout.temperature (verl); the Tina and Open-RS recipes
    score at 1.0 as their TRL versions did while sampling at 0.7."""
    from tina_jax.config import grpo_config, load_config, logprob_temperature

    cfg = load_config(None, ["rollout.temperature=0.6"])
    assert cfg.grpo.logprob_temperature == "sampling" and logprob_temperature(cfg) == 0.6
    assert grpo_config(cfg).logprob_temperature == 0.6
    assert grpo_config(load_config(None, ["grpo.logprob_temperature=1.0", "rollout.temperature=0.6"])
                       ).logprob_temperature == 1.0
    for name in ("tina_open_rs2", "tina_open_rs3", "open_rs3_full"):
        c = load_config(ROOT / "configs" / f"{name}.yaml")
        assert c.rollout.temperature == 0.7 and grpo_config(c).logprob_temperature == 1.0, name
    c = load_config(ROOT / "configs" / "tinylora_gsm8k.yaml")
    assert c.grpo.logprob_temperature == "sampling"
    with pytest.raises(ConfigError, match="grpo.logprob_temperature"):
        load_config(None, ["grpo.logprob_temperature=0"])


def test_tis_rejects_truncated_sampling_and_other_logprob_temperatures():
    from tina_jax.config import load_config

    with pytest.raises(ConfigError, match="top_p"):
        load_config(None, ["grpo.loss.tis_cap=2.0", "rollout.top_p=0.95"])
    with pytest.raises(ConfigError, match="logprob_temperature"):
        load_config(None, ["grpo.loss.tis_cap=2.0", "rollout.temperature=0.7", "grpo.logprob_temperature=1.0"])
    load_config(None, ["grpo.loss.tis_cap=2.0", "rollout.temperature=0.7"])


@pytest.mark.parametrize("name", ["open_rs3_full", "tina_open_rs3"])
def test_open_rs_cosine_is_not_clamped(name):
    """Open-RS / Tina's cosine reward (open-r1 code) uses cos(pi L / max_len) with L in characters, unclamped:
    a wrong answer of 5000 characters scores -0.5 + 0.25 (1 + cos(pi 5000 / 3584)), not -0.5."""
    import math

    from tina_jax import rewards

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    fn = rewards.build([s for s in cfg.rewards if s.name == "cosine"])
    total, _ = fn(["x" * 4990 + "\\boxed{3}"], solution=["$2$"])
    L = 4990 + len("\\boxed{3}")
    assert total[0] == pytest.approx(2.0 * (-0.5 + 0.25 * (1 + math.cos(math.pi * L / 3584))), abs=1e-9)


def test_tinylora_recipe_has_verls_details():
    """The authors' verl script: data.shuffle=False, GRPO advantage eps 1e-6, dual-clip c=3 (verl default),
    348 steps, warm-up int(0.05 x 348) = 17 scheduler steps stepped once per rollout."""
    from tina_jax.data import make_loader
    from tina_jax.config import grpo_config
    from tina_jax.trainer import build_loader

    c = load_config(ROOT / "configs" / "tinylora_gsm8k.yaml")
    assert (c.data.shuffle, c.grpo.adv_eps, c.grpo.loss.dual_clip) == (False, 1e-6, 3.0)
    assert (c.train.max_steps, c.optim.warmup_steps, c.optim.schedule_unit) == (348, 17, "rollout")
    assert grpo_config(c).loss.dual_clip == 3.0
    examples = [{"prompt_ids": [i], "i": i} for i in range(10)]
    loader = build_loader(load_config(None, ["data.shuffle=false", "grpo.prompts_per_step=4", "data.num_epochs=2"]),
                          examples)
    assert [[e["i"] for e in next(loader)] for _ in range(4)] == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    shuffled = make_loader(examples, 4, seed=0, num_epochs=1)
    assert [e["i"] for e in next(shuffled)] != [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------
# Values a user can get wrong: one clear ConfigError each (issue 13's probe table)
# ------------------------------------------------------------------------------------------------
import pytest as _pytest  # noqa: E402

from tina_jax.config import ConfigError as _CE, load_config as _load  # noqa: E402


@_pytest.mark.parametrize("override,match", [
    ("optim.lr=.inf", "optim.lr: must be a finite number"),
    ("optim.lr=.nan", "optim.lr: must be a finite number"),
    ("train.save_every=0", "train.save_every: must be >= 1"),
    ("train.eval_every=-5", "train.eval_every: must be >= 0"),
    ("grpo.adv_eps=-1", "grpo.adv_eps: must be >= 0"),
    ("rewards=[{name: accuracy, weight: .nan}]", "must be a finite number"),
    ("rewards=[{name: accuracy, params: {flavor: lenient}}]", "did you mean 'flavour'"),
    ("rewards=[{name: format, params: {x: 1}}]", "takes no parameters"),
    ("optim.lr=[1", "not valid YAML"),
])
def test_bad_values_are_config_errors(override, match):
    with _pytest.raises(_CE, match=match):
        _load(None, [override])


def test_duplicate_override_is_an_error():
    with _pytest.raises(_CE, match="given twice"):
        _load(None, ["optim.lr=1e-5", "optim.lr=2e-5"], strict_overrides=True)
    assert _load(None, ["optim.lr=1e-5", "optim.lr=2e-5"]).optim.lr == 2e-5  # library use: warned, last wins


def test_train_cli_intermixed_flags_and_one_line_errors(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(root / "launch" / "train.py"), "--config", str(root / "configs" / "smollm2_arith_cpu.yaml")]
    r = subprocess.run(cmd + ["train.max_steps=2", "--dry-run", "optim.lr=.inf"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "optim.lr: must be a finite number" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--dry-run", "--no-memory-plan", f"train.run_dir={tmp_path / 'run'}",
                              f"data.train={tmp_path / 'missing.jsonl'}"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "missing.jsonl" in r.stderr


# ------------------------------------------------------------------------------------------------
# The run config is composed of the library's configs (issue 13 item 1)
# ------------------------------------------------------------------------------------------------
def test_sections_are_the_library_configs():
    """rollout is a SamplingConfig and adapter an AdapterConfig; grpo and grpo.loss have exactly the fields of
    GrpoConfig and LossConfig, less those derived from rollout, plus the rollout schedule; the trainer gets
    the library objects with the derived values filled in."""
    import dataclasses

    from tina_jax.adapters import AdapterConfig
    from tina_jax.config import grpo_config, sampling_config, updates_per_rollout
    from tina_jax.rl import LossConfig
    from tina_jax.rl.grpo import GrpoConfig
    from tina_jax.sampling import SamplingConfig

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    c = load_config(None, ["rollout.num_samples=4", "rollout.max_new_tokens=20", "grpo.mini_batches=2",
                           "grpo.num_iterations=3", "grpo.loss.aggregation=microbatch_token_mean"])
    assert type(c.rollout) is SamplingConfig and type(c.adapter) is AdapterConfig
    assert names(type(c.grpo)) == names(GrpoConfig) - {"group_size"} | {"prompts_per_step", "num_iterations",
                                                                        "mini_batches"}
    assert names(type(c.grpo.loss)) == names(LossConfig) - {"max_completion_length"}
    g = grpo_config(c)
    assert type(g) is GrpoConfig and type(g.loss) is LossConfig
    assert (g.group_size, g.loss.max_completion_length, g.loss.microbatch_rows) == (4, 20, 4)
    assert (g.share_prompts, g.logprob_chunk, g.loss.aggregation) == (True, 64, "microbatch_token_mean")
    assert updates_per_rollout(c) == 6
    from tina_jax.config import sft_config
    from tina_jax.rl.sft import SftConfig

    assert sft_config(load_config(None, ["sft.micro_batch_size=4", "sft.logprob_chunk=8"])) == SftConfig(4, 8)
    s = sampling_config(c, num_samples=1)
    assert s == c.rollout.replace(max_prompt_length=c.data.max_prompt_length, num_samples=1)
    with pytest.raises(ConfigError, match=r"rollout\.max_prompt_length: leave it null.*data\.max_prompt_length"):
        load_config(None, ["rollout.max_prompt_length=100"])


@pytest.mark.parametrize("override, key", [
    ("rollout.top_k=-1", "rollout.top_k"), ("rollout.nucleus_cap=0", "rollout.nucleus_cap"),
    ("rollout.adapter_decoding=fused", "rollout.adapter_decoding"), ("rollout.cache_dtype=fp8", "rollout.cache_dtype"),
    ("grpo.loss.clip_eps_low=1.5", "grpo.loss.clip_eps_low"), ("grpo.loss.beta=-1", "grpo.loss.beta"),
    ("grpo.loss.dual_clip=0.5", "grpo.loss.dual_clip"), ("grpo.loss.microbatch_rows=0", "grpo.loss.microbatch_rows"),
    ("grpo.advantage=ppo", "grpo.advantage"), ("grpo.logprob_chunk=0", "grpo.logprob_chunk"),
    ("grpo.micro_batch_size=0", "grpo.micro_batch_size"), ("rollout.num_samples=1", "rollout.num_samples"),
    ("adapter.r=0", "adapter.r"), ("adapter.dropout=1.0", "adapter.dropout"), ("adapter.n_tie=0", "adapter.n_tie"),
    ("adapter.target_modules=[lm_head]", "adapter.target_modules"), ("adapter.init_std=-1", "adapter.init_std"),
])
def test_library_validation_errors_name_the_yaml_key(override, key):
    """Each value is checked once, by the library dataclass that defines it; the error is one line naming the key."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("old", ["adapter.rank", "rollout.num_generations", "grpo.aggregation", "grpo.aggregation_rows",
                                 "grpo.clip_eps_low", "grpo.clip_eps_high", "grpo.beta", "grpo.kl_estimator",
                                 "grpo.tis_cap", "grpo.dual_clip"])
def test_old_key_names_name_the_new_ones(old, tmp_path):
    from tina_jax.config import RENAMED

    new = RENAMED[old]
    with pytest.raises(ConfigError, match=f"config key '{old}' is now '{new}'"):
        load_config(None, [f"{old}=1"])
    sec, key = old.split(".")
    p = tmp_path / "old.yaml"
    p.write_text(f"{sec}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=f"old.yaml: config key '{old}' is now '{new}'"):
        load_config(p)


def test_a_config_saved_with_the_old_names_loads_with_upgrade(tmp_path):
    """run directories written before the rename (their config.yaml) still load where a run is read back."""
    p = tmp_path / "config.yaml"
    p.write_text("adapter: {rank: 4, alpha: 8}\nrollout: {num_generations: 4}\n"
                 "grpo: {beta: 0.04, aggregation: microbatch_token_mean, aggregation_rows: 4, prompts_per_step: 2}\n")
    c = load_config(p, upgrade=True)
    assert (c.adapter.r, c.rollout.num_samples, c.grpo.loss.beta, c.grpo.loss.microbatch_rows) == (4, 4, 0.04, 4)
    assert c == load_config(None, ["adapter.r=4", "adapter.alpha=8", "rollout.num_samples=4", "grpo.loss.beta=0.04",
                                   "grpo.loss.aggregation=microbatch_token_mean", "grpo.loss.microbatch_rows=4",
                                   "grpo.prompts_per_step=2"])


def test_scoring_temperature_is_derived_from_the_sampling_config():
    """grpo.logprob_temperature: sampling = SamplingConfig.scoring_temperature: the sampling temperature, and 1 for
    greedy (the sampler reports the temperature-1 log-softmax of the argmax), as the sampler's own logprobs."""
    from tina_jax.config import grpo_config
    from tina_jax.sampling import SamplingConfig

    assert SamplingConfig(4, temperature=0.6).scoring_temperature == 0.6
    assert SamplingConfig(4, temperature=0.0).scoring_temperature == 1.0
    assert grpo_config(load_config(None, ["rollout.temperature=0"])).logprob_temperature == 1.0
    assert grpo_config(load_config(None, ["rollout.temperature=0", "grpo.logprob_temperature=0.5"])
                       ).logprob_temperature == 0.5


def test_eval_cli_settings_are_read_by_load_config(tmp_path, monkeypatch):
    """launch/eval.py reads its --config YAML through config.load_config (schema EvalSettings): the same
    nearest-key errors and type checks as a run config; flags (updates) win over the file, overrides over both."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "launch" / "eval.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "eval_cli", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    p = tmp_path / "e.yaml"
    p.write_text("model: m\nbenchmarks: [gsm8k, math500]\ncheckpoint: 40\nsamples: 2\n")
    s = load_config(p, ["seed=3"], schema=mod.EvalSettings, updates={"samples": 4})
    assert (s.benchmarks, s.checkpoint, s.samples, s.seed, s.protocol) == (("gsm8k", "math500"), 40, 4, 3, "greedy")
    assert load_config(None, schema=mod.EvalSettings, updates={"run": "r", "benchmarks": "kk"}).benchmarks == ("kk",)
    with pytest.raises(ConfigError, match=r"e\.yaml: unknown config key 'sampels'; did you mean 'samples'"):
        load_config(p, ["sampels=2"], schema=mod.EvalSettings)
    with pytest.raises(ConfigError, match="samples: expected an integer"):
        load_config(p, ["samples=two"], schema=mod.EvalSettings)
    with pytest.raises(ConfigError, match="--adapter and --run are exclusive"):
        load_config(p, ["run=r", "adapter=a"], schema=mod.EvalSettings)
