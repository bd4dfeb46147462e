"""Trainer paths the other tests leave thin: several updates per rollout with old logprobs (against a direct
reference of the clipped objective), held-out evaluation on a model forced to a known answer, a batch that does
not divide the mesh failing early through the command line, and what the dry run reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tina_jax
from tina_jax.rl.advantages import compute_advantages
from tina_jax.rl.grpo import GrpoConfig, make_grpo_step, make_logprob_fn
from tina_jax.rl.losses import LossConfig

from grpo_fixtures import CFG, G, P, make_batch, make_state
from helpers import smollm2_tokenizer_files, train_cli

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "smollm2_arith_cpu.yaml"


# ------------------------------------------------------------------------------------------------
# Several updates per rollout: grpo.mini_batches > 1 and grpo.num_iterations > 1 with old logprobs
# ------------------------------------------------------------------------------------------------
def _clipped_objective(params, mb, old, el, eh):
    """The PPO/GRPO clipped surrogate, token mean, written directly: full logits, no chunking."""
    ids = jnp.concatenate([mb["prompt_ids"], mb["completion_ids"]], 1)
    mask = jnp.concatenate([mb["prompt_mask"], mb["completion_mask"]], 1)
    logits = tina_jax.forward(CFG, params, ids, mask)[:, P - 1:-1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), mb["completion_ids"][..., None], -1)[..., 0]
    r = jnp.exp(logp - old)
    a = mb["advantages"][:, None]
    per_token = -jnp.minimum(r * a, jnp.clip(r, 1 - el, 1 + eh) * a)
    cm = mb["completion_mask"]
    return jnp.sum(per_token * cm) / jnp.sum(cm), r


def test_two_iterations_over_two_mini_batches_follow_the_clipped_objective():
    """The trainer's multi-update loop (old logprobs of the rollout's policy, then num_iterations passes over
    mini_batches mini-batches, one optimizer update each) equals plain SGD on the clipped objective written
    out directly, update after update; the later updates must clip for the test to bite."""
    lr, el, eh, n_mb, n_it = 2.0, 0.2, 0.28, 2, 2
    batch = make_batch(with_sampler=False)
    batch["advantages"] = compute_advantages(batch.pop("rewards"), G)
    gcfg = GrpoConfig(loss=LossConfig(clip_eps_low=el, clip_eps_high=eh), group_size=G, micro_batch_size=2,
                      logprob_chunk=4)
    state = make_state(optax.sgd(lr), keep_reference=False)
    old = make_logprob_fn(gcfg)(state, batch)  # the rollout's policy, before the first update
    batch["old_logprobs"] = old
    step = make_grpo_step(gcfg, donate=False)
    ref_grad = jax.jit(jax.value_and_grad(lambda p, mb: _clipped_objective(p, mb, mb["old_logprobs"], el, eh),
                                          has_aux=True))
    ref_params = state.trainable
    rows = batch["completion_ids"].shape[0] // n_mb
    clipped = []
    for it in range(n_it):
        for k in range(n_mb):
            mb = {key: v[k * rows:(k + 1) * rows] for key, v in batch.items()}
            state, m = step(state, mb)
            (loss, r), g = ref_grad(ref_params, mb)
            ref_params = jax.tree.map(lambda p, gg: p - lr * gg, ref_params, g)
            assert abs(float(m["loss"]) - float(loss)) < 1e-5, (it, k)
            a = np.asarray(mb["advantages"])[:, None]
            r, cm = np.asarray(r), np.asarray(mb["completion_mask"]) > 0
            want_hi = ((a > 0) & (r > 1 + eh) & cm).sum() / cm.sum()
            want_lo = ((a < 0) & (r < 1 - el) & cm).sum() / cm.sum()
            assert abs(float(m["clip_frac_high"]) - want_hi) < 1e-6 and abs(float(m["clip_frac_low"]) - want_lo) < 1e-6
            clipped.append(want_hi + want_lo)
            for x, y in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(ref_params)):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=0)
    assert clipped[0] == 0.0  # the first update starts at the rollout's policy: ratio 1 everywhere
    assert max(clipped[2:]) > 0, "the second pass must clip for this test to bite"


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_trainer_scores_old_logprobs_only_where_the_policy_has_moved(tiny_chat_model_dir, tmp_path, iterations):
    """One pass over two mini-batches: the first is updated at the rollout's policy, so the trainer scores old
    logprobs for the second only and the first uses stop_gradient(current) -- the same updates as giving both
    the rollout policy's logprobs (to float rounding). Two passes: every mini-batch gets them."""
    from tina_jax import config as config_lib, trainer

    cfg = config_lib.load_config(RECIPE, overrides=[
        f"model.source={tiny_chat_model_dir}", f"train.run_dir={tmp_path / 'run'}", "train.max_steps=1",
        "rollout.num_samples=4", "grpo.prompts_per_step=2", "grpo.micro_batch_size=4", "grpo.mini_batches=2",
        f"grpo.num_iterations={iterations}", "rollout.max_new_tokens=8", "adapter.r=4", "optim.lr=0.05",
        "data.n_eval=2", "train.plot=false", "train.tensorboard=false",
        "rewards=[{name: cosine, weight: 1.0, params: {max_len: 300}}]"])
    (tmp_path / "run").mkdir()
    run = trainer.setup(cfg, resume=False, console=lambda _: None)
    start = jax.tree.map(jnp.copy, run.state)
    scored, seen = [], []
    score, update = run.old_logprob_fn, run.update
    run.old_logprob_fn = lambda st, b: scored.append(int(b["completion_ids"].shape[0])) or score(st, b)
    run.update = lambda st, mb: seen.append(jax.tree.map(np.asarray, mb)) or update(st, mb)
    state, _ = trainer.grpo_train_step(run, run.state, 0)
    rows = 4  # 8 completions in 2 mini-batches
    assert scored == ([rows] if iterations == 1 else [2 * rows])
    assert ["old_logprobs" in mb for mb in seen] == ([False, True] if iterations == 1 else [True] * 4)
    # the same updates with the rollout policy's logprobs given for every mini-batch
    full = {k: np.concatenate([seen[0][k], seen[1][k]]) for k in seen[1] if k != "old_logprobs"}
    old = np.asarray(score(start, run.place(full)))
    np.testing.assert_allclose(seen[1]["old_logprobs"], old[rows:], atol=1e-6, rtol=0)
    flat = lambda st: np.asarray(jax.flatten_util.ravel_pytree(st.trainable)[0])  # noqa: E731

    def replay(with_old):  # from a copy of the starting state (updates donate theirs)
        st = jax.tree.map(jnp.copy, start)
        for j, mb in enumerate(seen):
            k = j % 2
            mb = {key: v for key, v in mb.items() if key != "old_logprobs"}
            if with_old(j):
                mb["old_logprobs"] = old[k * rows:(k + 1) * rows]
            st, _ = update(st, run.place(mb))
        return flat(st)

    got, want = flat(state), replay(lambda j: True)
    assert np.abs(flat(start) - want).max() > 1e-3, "the updates must move the parameters for this test to bite"
    # Adam divides by sqrt(v), so ratio rounding of ~1e-7 shows as ~1e-6 in the parameters
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # ... while dropping the old logprobs where the policy has moved is a different update
    assert np.abs(replay(lambda j: j == 0) - want).max() > 1e-4


# ------------------------------------------------------------------------------------------------
# trainer.evaluate on a model that always answers "42"
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forced_answer_model_dir(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer whose greedy (and T=1) answer to any chat prompt is "42" then
    <|im_end|>: attention and MLP outputs are zero, so the next token depends on the current one only, and the
    untied lm_head maps "\\n" (the end of the generation prompt) -> "4" -> "2" -> <|im_end|>."""
    import torch
    import transformers

    from tina_jax.models.loading import load_tokenizer
    from tina_jax.sampling import encode_prompts

    d = tmp_path_factory.mktemp("forced42")
    smollm2_tokenizer_files(d)
    tok = load_tokenizer(d)
    last = encode_prompts(tok, [[{"role": "user", "content": "hi"}]])[0][-1]
    answer = tok("42", add_special_tokens=False)["input_ids"]
    chain = [last, *answer, tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), chain
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        for i, (cur, nxt) in enumerate(zip(chain, chain[1:])):
            emb[cur, i] = 1.0
            head[nxt, i] = 50.0
    model.save_pretrained(str(d), safe_serialization=True)
    return d, tok


def test_evaluate_counts_the_forced_answer_right_where_the_gold_is_42(forced_answer_model_dir):
    from tina_jax import sampling as smp, trainer
    from tina_jax.config import load_config
    from tina_jax.data import pipeline

    d, tok = forced_answer_model_dir
    model = tina_jax.load_model(str(d))
    records = [{"problem": f"What is {a} + {b}?", "solution": str(a + b)} for a, b in
               [(20, 22), (1, 1), (40, 2), (30, 12), (5, 5)]]
    examples, _ = pipeline.prepare_examples(records, tok, recipe="plain", required_fields=("solution",))
    cfg = load_config(RECIPE, [f"model.source={d}", "train.eval_samples=3", "train.eval_temperature=1.0",
                               "train.eval_batch_size=6", "rollout.max_new_tokens=6"])
    sampling = smp.SamplingConfig(max_new_tokens=6, num_samples=8, stop_token_ids=smp.default_stop_token_ids(
        model.config, tok), pad_token_id=0)
    seen = []

    def is_correct(completions, solution, **_):
        seen.extend(completions)
        return [c.strip() == s for c, s in zip(completions, solution)]

    m = trainer.evaluate(model, model.params, examples, cfg, sampling, is_correct, jax.random.key(0))
    assert set(seen) == {"42"} and len(seen) == 5 + 5 * 3  # every prompt greedy once, sampled 3 times
    assert m["eval/greedy_accuracy"] == pytest.approx(3 / 5) and m["eval/sampled_accuracy"] == pytest.approx(3 / 5)
    assert m["eval/greedy_mean_length"] == 3.0 and m["eval/sampled_mean_length"] == 3.0  # "4", "2", <|im_end|>


# ------------------------------------------------------------------------------------------------
# A rollout batch that does not divide the mesh: an early, clear failure through the command line
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dry", [False, True])
def test_batch_that_does_not_divide_the_mesh_fails_before_loading_the_model(tiny_chat_model_dir, tmp_path, dry):
    """3 (fake CPU) devices, mesh [-1, 1, 1]: the default recipe's mini-batch of 32 completions cannot be split
    over data = 3; the run (and its dry run) stops at once with one line naming both numbers."""
    run = tmp_path / "run"
    over = [f"model.source={tiny_chat_model_dir}", f"train.run_dir={run}", "mesh.shape=[-1,1,1]", "adapter.r=4",
            "data.n_train=32"]
    r = train_cli(RECIPE, over + (["--dry-run", "--no-memory-plan"] if dry else []), devices=3, timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "rollout mini-batch (completions) size 32 is not divisible by data x fsdp = 3" in r.stderr
    assert "Traceback" not in r.stderr and "parameters" not in r.stdout  # the model was never loaded
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


@pytest.mark.slow  # a whole dry run in a subprocess (~30 s on 2 cores)
def test_the_same_command_on_a_mesh_that_divides_passes_the_dry_run(tiny_chat_model_dir, tmp_path):
    over = [f"model.source={tiny_chat_model_dir}", f"train.run_dir={tmp_path / 'run'}", "mesh.shape=[-1,1,1]",
            "adapter.r=4", "data.n_train=32", "--dry-run", "--no-memory-plan"]
    ok = train_cli(RECIPE, over, devices=4, timeout=300)
    assert ok.returncode == 0 and "dry run OK" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "data x fsdp x tensor = 4 x 1 x 1" in ok.stdout, ok.stdout[-2000:]


# ------------------------------------------------------------------------------------------------
# The dry run: what it reports
# ------------------------------------------------------------------------------------------------
def test_dry_run_reports_the_recipe_it_was_given(tiny_chat_model_dir, tmp_path):
    """Data steps, mesh, the GRPO step's metrics and the memory estimate's exact terms (weights, adapter,
    optimizer state, KV cache), each checked against an independent count on the loaded model."""
    from tina_jax import adapters, trainer
    from tina_jax.config import load_config

    over = [f"model.source={tiny_chat_model_dir}", f"train.run_dir={tmp_path / 'run'}", "data.n_train=10",
            "data.num_epochs=1", "grpo.prompts_per_step=2", "rollout.num_samples=4", "grpo.micro_batch_size=4",
            "rollout.max_new_tokens=16", "adapter.r=4", "train.max_steps=20"]
    cfg = load_config(RECIPE, over)
    lines = []
    rep = trainer.dry_run(cfg, console=lines.append, memory_plan=False)
    text = "\n".join(lines)
    assert rep["data_steps"] == 5 and "the run ends at step 5 (data exhausted)" in text  # 10 prompts // 2, 1 epoch
    assert rep["data"]["train"]["kept"] == 10 and rep["mesh"] == [1, 1, 1]
    assert {"loss", "grad_norm", "entropy", "clip_fraction"} <= set(rep["grpo_step_metrics"])
    assert text.splitlines()[-1].startswith("dry run OK")

    model = tina_jax.load_model(str(tiny_chat_model_dir), dtype="float32")
    mcfg, mem = model.config, rep["memory_bytes"]
    assert mem["base_params"] == sum(x.size * 4 for x in jax.tree.leaves(model.params))
    a = cfg.adapter
    n_lora = adapters.count_trainable("lora", mcfg, a.target_modules, r=4, alpha=a.alpha)
    assert mem["trainable"] == 4 * n_lora
    assert 2 * mem["trainable"] <= mem["optimizer_state"] <= 2 * mem["trainable"] + 64  # Adam's mu and nu (+ counts)
    rows, width = 2 * 4, cfg.data.max_prompt_length + 16
    assert mem["rollout_kv_cache"] == rows * width * mcfg.num_layers * 2 * mcfg.num_kv_heads * mcfg.head_dim * 4
    assert rep["memory_per_device_bytes"]["base_params"] == mem["base_params"]  # one device holds everything
