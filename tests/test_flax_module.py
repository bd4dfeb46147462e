"""The nnx module view of the decoder: same logits as forward, no copy, Flax tooling works."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tina_jax import adapters
from tina_jax.models import forward, init_params
from tina_jax.models.config import ModelConfig
from tina_jax.models.flax_module import TinaLM

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def _batch():
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, CFG.vocab_size)
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7], jnp.int32)
    return ids, mask


def test_module_call_equals_forward_without_copying(params):
    lm = TinaLM(CFG, params)
    ids, mask = _batch()
    np.testing.assert_array_equal(np.asarray(lm(ids, mask)), np.asarray(forward(CFG, params, ids, mask)))
    leaves, lm_leaves = jax.tree.leaves(params), jax.tree.leaves(lm.pytree())
    assert len(leaves) == len(lm_leaves) and all(a is b for a, b in zip(leaves, lm_leaves))
    graphdef, state = nnx.split(lm)
    again = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(again(ids, mask)), np.asarray(lm(ids, mask)))


def test_module_accepts_adapted_params_and_nnx_optimizer_matches_optax(params):
    ad = adapters.init("lora", CFG, params, jax.random.key(2), r=4, alpha=8)
    ad = ad.replace(trainable=jax.tree.map(lambda x: x + 0.1, ad.trainable))
    adapted = adapters.apply(params, ad)
    ids, mask = _batch()
    lm = TinaLM(CFG, adapted)
    np.testing.assert_allclose(np.asarray(lm(ids, mask)), np.asarray(forward(CFG, adapted, ids, mask)), atol=0)

    # one SGD step through nnx.Optimizer == optax on the plain pytree
    full = TinaLM(CFG, params)
    loss = lambda logits: jnp.mean(jax.nn.logsumexp(logits, -1))  # noqa: E731
    opt = nnx.Optimizer(full, optax.sgd(0.5), wrt=nnx.Param)
    grads = nnx.grad(lambda m: loss(m(ids, mask)))(full)
    opt.update(full, grads)
    g = jax.grad(lambda p: loss(forward(CFG, p, ids, mask)))(params)
    want = optax.apply_updates(params, jax.tree.map(lambda x: -0.5 * x, g))
    for a, b in zip(jax.tree.leaves(full.pytree()), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert not np.allclose(np.asarray(jax.tree.leaves(full.pytree())[0]), np.asarray(jax.tree.leaves(params)[0]))
