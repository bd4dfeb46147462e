"""Run in a subprocess with 8 simulated CPU devices: one grpo_step on several meshes vs one device.

Prints one JSON line {mesh_shape: max abs difference} (loss, metrics and updated parameters)."""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import json  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np  # noqa: E402
import optax  # noqa: E402

from grpo_fixtures import G, make_batch, make_state  # noqa: E402
from tina_jax.rl.grpo import GrpoConfig, make_grpo_step, shard_state  # noqa: E402
from tina_jax.rl.losses import LossConfig  # noqa: E402
from tina_jax.sharding import make_mesh  # noqa: E402


def main(shapes):
    assert jax.device_count() == 8, jax.devices()
    gc = GrpoConfig(loss=LossConfig(beta=0.04, clip_eps_high=0.28), group_size=G)
    batch = make_batch()
    # SGD: the update is linear in the gradient (Adam's first step is g/|g|, which amplifies the
    # rounding of near-zero gradients and would hide what this test checks).
    tx = optax.sgd(0.5)
    ref_state, ref_metrics = make_grpo_step(gc, donate=False)(make_state(tx), batch)
    out = {}
    for shape in shapes:
        mesh = make_mesh(shape)
        state = shard_state(make_state(tx), mesh)
        step = make_grpo_step(gc, mesh=mesh, state=state, donate=False)
        new_state, metrics = step(state, batch)
        spec = new_state.trainable["layers"]["q_proj"].sharding.spec
        diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(new_state.trainable), jax.tree.leaves(ref_state.trainable))]
        mdiff = max(abs(float(metrics[k]) - float(ref_metrics[k])) for k in ref_metrics)
        out[str(tuple(shape))] = {"params": max(diffs), "metrics": mdiff, "q_proj_spec": str(spec)}
    print(json.dumps(out))


if __name__ == "__main__":
    main([(8, 1, 1), (2, 2, 2), (1, 4, 2)])
