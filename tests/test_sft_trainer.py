"""SFT data rendering (real chat template), the SFT loop's exact resume, and init_from for two stages."""
from __future__ import annotations

import math
import signal

import jax
import numpy as np
import pytest

from conftest import smollm2_tokenizer_dir
from test_trainer import _comparable, _rows, _train_steps, _wait_for, ROOT, TRAIN

SFT_CFG = ROOT / "configs" / "smollm2_kk_sft_cpu.yaml"


@pytest.fixture(scope="module")
def tok():
    from tina_jax.models.loading import load_tokenizer

    return load_tokenizer(smollm2_tokenizer_dir())


def test_prompt_tokens_carry_no_loss_on_a_real_chat_template(tok):
    from tina_jax.data.sft import prepare_sft_examples

    records = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "It is 6."}]},
        {"prompt": "Name a colour.", "completion": "Blue, like the sky."},
        {"quiz": "Who is a knight?", "completion": "<think>x</think><answer>(1) A is a knight</answer>"},
        {"prompt": "no target here"},
        {"prompt": "x" * 5000, "completion": "too long"},
    ]
    ex, rep = prepare_sft_examples(records, tok, recipe="kk", max_length=256)
    assert (rep["total"], rep["kept"], rep["no_target"], rep["overlong"]) == (5, 3, 1, 1)
    targets = ["It is 6.", "Blue, like the sky.", "<think>x</think><answer>(1) A is a knight</answer>"]
    for e, target in zip(ex, targets):
        ids, mask = np.array(e["input_ids"]), np.array(e["loss_mask"])
        n_prompt = int((mask == 0).sum())
        assert (mask[:n_prompt] == 0).all() and (mask[n_prompt:] == 1).all()
        prompt_text = tok.decode(ids[:n_prompt].tolist())
        assert prompt_text.endswith("<|im_start|>assistant\n") and target not in prompt_text
        assert tok.decode(ids[mask == 1].tolist()) == target + "<|im_end|>\n"
    assert "Be brief." in tok.decode(ex[0]["input_ids"]) and "4<|im_end|>" in tok.decode(ex[0]["input_ids"])
    # The recipe's system prompt (kk: Logic-RL's) is in the prompt of a recipe-field record.
    assert "logical reasoning problem" in tok.decode(ex[2]["input_ids"])
    # A recipe whose assistant turn is pre-filled (kk_logic_rl: "<think>") trains on the prefix too.
    ex2, _ = prepare_sft_examples(records[2:3], tok, recipe="kk_logic_rl")
    m = np.array(ex2[0]["loss_mask"])
    assert tok.decode(np.array(ex2[0]["input_ids"])[m == 1].tolist()).startswith("<think>")
    with pytest.raises(ValueError, match="dropped"):
        prepare_sft_examples(records[3:4], tok)


def test_raw_prompt_ending_in_spaces_trains_every_token_after_the_prompt_text(tok):
    """Recipe warmup_kk ends in "<think>\\n    ": the tokens of the prompt alone are not a prefix of the whole
    text's (BPE merges the spaces with what follows), so the whole text is tokenized once and every token
    holding completion characters is trained, as TRL's completion-only collator did for the paper."""
    from tina_jax.data import prompts
    from tina_jax.data.sft import prepare_sft_examples

    quiz = "A very special island is inhabited only by knights and knaves. Zoey says ..."
    completion = "Suppose Zoey is a knight.\n</think>\n<answer>\n(1) Zoey is a knight\n</answer>"
    prompt_text = prompts.WARMUP_KK_PROMPT.format(quiz=quiz)
    assert prompt_text.endswith("Assistant: <think>\n    ")
    p_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tok(prompt_text + completion, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(p_ids)] != p_ids  # the case this path exists for
    ex, rep = prepare_sft_examples([{"quiz": quiz, "completion": completion}], tok, recipe="warmup_kk")
    ids, mask = ex[0]["input_ids"], np.array(ex[0]["loss_mask"])
    assert ids == full_ids and rep["kept"] == 1
    k = int(np.argmax(mask))
    assert (mask[:k] == 0).all() and (mask[k:] == 1).all()  # one prompt part, then one completion part
    assert prompt_text.startswith(tok.decode(ids[:k])) and len(tok.decode(ids[:k])) < len(prompt_text)
    assert tok.decode(ids[:k + 1]).startswith(prompt_text)  # the first trained token is the one that crosses
    assert tok.decode(ids[k:]).endswith(completion) and not tok.decode(ids[k:]).startswith("<")


def _sft_overrides(model_dir, run_dir, steps=5, eval_every=3) -> list[str]:
    return [f"model.source={model_dir}", f"train.run_dir={run_dir}", f"train.max_steps={steps}",
            "train.save_every=1", f"train.eval_every={eval_every}", "data.n_eval=2", "data.n_train=40", "rollout.max_new_tokens=8",
            "sft.batch_size=4", "sft.micro_batch_size=2", "optim.lr=1e-3", "adapter.rank=4", "train.plot=false",
            "train.tensorboard=false", "train.time_limit_minutes=null"]


def _start(args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(TRAIN), "--config", str(SFT_CFG), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_sft_run_resumes_to_identical_metrics(tiny_chat_model_dir, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _start(_sft_overrides(tiny_chat_model_dir, ref_dir))
    out, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0, out[-3000:]
    want = _comparable(_rows(ref_dir))
    assert sorted(want) == [0, 1, 2, 3, 4, 5] and "eval/greedy_accuracy" in want[3]
    assert len({round(want[s]["loss"], 6) for s in range(1, 6)}) == 5 and want[1]["grad_norm"] > 0

    p = _start(_sft_overrides(tiny_chat_model_dir, run_dir))
    _wait_for(p, run_dir, 2, timeout=600)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = _start(_sft_overrides(tiny_chat_model_dir, run_dir))
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from" in out
    got = _comparable(_rows(run_dir))
    assert sorted(got) == sorted(want)
    for step in want:
        assert set(got[step]) == set(want[step]), step
        for k, v in want[step].items():
            if isinstance(v, float) and math.isfinite(v):
                assert abs(got[step][k] - v) <= 1e-5 * max(1.0, abs(v)), (step, k, got[step][k], v)
            else:
                assert got[step][k] == v, (step, k)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "lora"])
def test_init_from_restores_the_weights_stage_one_saved(tiny_chat_model_dir, tmp_path, kind):
    from tina_jax import adapters, checkpoint, config as config_lib, trainer
    from tina_jax.models import load_model
    from tina_jax.models.linear import materialize_tree

    stage1 = tmp_path / "stage1"
    cfg1 = config_lib.load_config(SFT_CFG, _sft_overrides(tiny_chat_model_dir, stage1, steps=2, eval_every=0)
                                  + [f"adapter.kind={kind}"])
    trainer.train(cfg1, console=lambda s: None)
    base = load_model(str(tiny_chat_model_dir))
    # What stage 1 saved, read back independently of init_from.
    ad = trainer.build_adapter(cfg1, base.config, base.params)
    state = trainer.init_state(base.config, base.params, trainer.optim.build_optimizer(cfg1.optim, 2),
                               jax.random.key(0), adapter=ad)
    ck = checkpoint.Checkpointer(stage1 / "checkpoints", keep_last=2, best_metric="eval/greedy_accuracy")
    arrays, _ = ck.restore(ck.latest_step(), like=trainer._checkpoint_arrays(state))
    ck.close()
    if kind == "none":
        want = arrays["trainable"]
    else:
        want = materialize_tree(adapters.apply(base.params, adapters.Adapter(
            trainable=arrays["trainable"], frozen=arrays["adapter_frozen"], spec=ad.spec)))
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(base.params)))
    assert moved > 0, "stage 1 must change the weights for this test to bite"

    cfg2 = config_lib.load_config(ROOT / "configs" / "smollm2_arith_cpu.yaml", [
        f"model.source={tiny_chat_model_dir}", f"init_from.run={stage1}", "init_from.checkpoint=last"])
    got = trainer.apply_init_from(cfg2, load_model(str(tiny_chat_model_dir)), console=lambda s: None)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got.params, want)

    bad = config_lib.load_config(ROOT / "configs" / "smollm2_arith_cpu.yaml", [
        f"init_from.run={tmp_path / 'nowhere'}"])
    with pytest.raises(trainer.TrainingError, match="not a run directory"):
        trainer.apply_init_from(bad, base, console=lambda s: None)
