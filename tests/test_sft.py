"""sft_step: completion-only cross-entropy, exact micro-batching and packing, parity with torch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tina_jax
from tina_jax import adapters
from tina_jax.rl.grpo import init_state
from tina_jax.rl.sft import SftConfig, make_sft_step, pack_sequences, sft_loss, sft_step

from grpo_fixtures import CFG


def _seqs(seed=0, n=6):
    """(token ids, loss mask) sequences: a prompt (mask 0) then a completion (mask 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, c = int(rng.integers(2, 6)), int(rng.integers(1, 6))
        out.append((rng.integers(0, CFG.vocab_size, p + c).tolist(), [0] * p + [1] * c))
    return out


def _state(tx=None, adapter_kind=None):
    params = tina_jax.init_params(CFG, jax.random.key(0))
    adapter = None
    if adapter_kind == "lora":
        adapter = adapters.init("lora", CFG, params, jax.random.key(3), r=2, alpha=4.0)
    elif adapter_kind == "lora_xs":
        adapter = adapters.init("lora_xs", CFG, params, jax.random.key(3), r=2, alpha=4.0)
    elif adapter_kind == "tinylora":
        adapter = adapters.init("tinylora", CFG, params, jax.random.key(3), r=2, alpha=4.0, u=2)
    return init_state(CFG, params, tx or optax.sgd(1.0), jax.random.key(1), adapter=adapter)


def _grads(batch, config=SftConfig()):
    """Gradient (= minus the sgd(1.0) update) and metrics of one step."""
    state = _state()
    new, m = jax.jit(lambda s, b: sft_step(s, b, config))(state, {k: jnp.asarray(v) for k, v in batch.items()})
    return jax.tree.map(lambda a, b: np.asarray(a - b), state.trainable, new.trainable), m


def test_micro_batched_equals_full_batch():
    batch = pack_sequences(_seqs(), rows=6, length=12, pack=False)
    g_full, m_full = _grads(batch)
    for mbs in (1, 2, 3):
        g, m = _grads(batch, SftConfig(micro_batch_size=mbs, logprob_chunk=5))
        np.testing.assert_allclose(float(m["loss"]), float(m_full["loss"]), rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_full)


def test_packed_equals_unpacked():
    seqs = _seqs(1, n=6)
    unpacked = pack_sequences(seqs, rows=6, length=12, pack=False)
    packed = pack_sequences(seqs, rows=3, length=24, pack=True)
    assert packed["segment_ids"].max() >= 2  # several sequences really share a row
    g_u, m_u = _grads(unpacked)
    g_p, m_p = _grads(packed)
    assert float(m_u["target_tokens"]) == float(m_p["target_tokens"]) == sum(sum(m) for _, m in seqs)
    np.testing.assert_allclose(float(m_p["loss"]), float(m_u["loss"]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_p, g_u)


def test_prompt_tokens_carry_no_loss():
    """Changing prompt tokens' targets changes nothing but the context; masking a completion token out
    removes exactly its -log p (numpy reference on full logits)."""
    seqs = _seqs(2, n=4)
    batch = pack_sequences(seqs, rows=4, length=12, pack=False)
    params = tina_jax.init_params(CFG, jax.random.key(0))
    s, d = sft_loss(CFG, params, *(jnp.asarray(batch[k]) for k in ("input_ids", "segment_ids", "loss_mask")), 4)
    logits = np.asarray(tina_jax.forward(CFG, params, jnp.asarray(batch["input_ids"]),
                                         jnp.asarray((batch["segment_ids"] > 0).astype(np.int32))), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want, n = 0.0, 0
    for r, (toks, mask) in enumerate(seqs):
        for t in range(1, len(toks)):
            if mask[t]:
                want -= logp[r, t - 1, toks[t]]
                n += 1
    assert float(d) == n == sum(sum(m) for _, m in seqs)
    np.testing.assert_allclose(float(s), want, rtol=1e-5)


def test_loss_equals_torch_cross_entropy(hf_tiny_dir):
    import torch

    d, hf = hf_tiny_dir("qwen2_tied")
    model = tina_jax.load_model(str(d))
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(3):
        p, c = int(rng.integers(3, 8)), int(rng.integers(2, 8))
        seqs.append((rng.integers(0, 128, p + c).tolist(), [0] * p + [1] * c))
    batch = pack_sequences(seqs, rows=1, length=40, pack=True)  # all three packed in one row
    s, n = sft_loss(model.config, model.params, *(jnp.asarray(batch[k]) for k in
                                                  ("input_ids", "segment_ids", "loss_mask")), 8)
    total, count = 0.0, 0
    with torch.no_grad():  # reference: each sequence alone, HF's shifted cross-entropy with -100 labels
        for toks, mask in seqs:
            ids = torch.tensor([toks])
            labels = torch.tensor([[t if m else -100 for t, m in zip(toks, mask)]])
            out = hf(input_ids=ids, labels=labels)
            k = sum(mask)
            total += float(out.loss) * k
            count += k
    assert float(n) == count
    np.testing.assert_allclose(float(s) / float(n), total / count, rtol=2e-5)


@pytest.mark.parametrize("kind", [None, "lora", "lora_xs", "tinylora"])
def test_sft_step_trains_every_adapter_kind(kind):
    batch = {k: jnp.asarray(v) for k, v in pack_sequences(_seqs(3), rows=6, length=12, pack=False).items()}
    state = _state(optax.adam(1e-2), kind)
    step = make_sft_step(SftConfig(micro_batch_size=3))
    losses = []
    for _ in range(5):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] and int(state.step) == 5


def test_bad_batches_are_named():
    batch = pack_sequences(_seqs(), rows=6, length=12, pack=False)
    with pytest.raises(ValueError, match="loss_mask"):
        sft_step(_state(), {k: v for k, v in batch.items() if k != "loss_mask"})
    with pytest.raises(ValueError, match="does not divide"):
        sft_step(_state(), batch, SftConfig(micro_batch_size=4))
    with pytest.raises(ValueError, match="do not fit"):
        pack_sequences(_seqs(), rows=1, length=12, pack=True)
