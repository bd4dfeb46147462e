"""Adapters as parameter transforms: LoRA, LoRA-XS and TinyLoRA.

    adapter = adapters.init("tinylora", model.config, model.params, key, u=1, n_tie=16)
    adapter = adapters.build(AdapterConfig(kind="tinylora", r=2, alpha=32), model.config, model.params)  # or
    params = adapters.apply(model.params, adapter, dropout_rng=key)   # containers; forward() as usual
    grads = jax.grad(lambda t: loss(adapters.apply(model.params, adapter.replace(trainable=t))))(adapter.trainable)
    merged = adapters.merge(model.params, adapter)                    # plain arrays (sampling, export)

See ``core`` for the pytree layout, ``lora``/``svd`` for the math and ``export`` for PEFT / HF I/O.
"""
from tina_jax.adapters.core import (
    DEFAULT_TARGETS, KERNELS, KINDS, Adapter, AdapterConfig, AdapterSpec, apply, build, cores, count_trainable, delta_weights,
    init, make_spec, merge, num_trainable, resolve_targets, summary,
)
from tina_jax.adapters.export import export_merged, export_peft, load_peft, lora_factors

__all__ = [
    "Adapter", "AdapterConfig", "AdapterSpec", "build", "KINDS", "KERNELS", "DEFAULT_TARGETS", "init", "apply", "merge", "cores",
    "delta_weights", "num_trainable", "count_trainable", "summary", "make_spec", "resolve_targets",
    "export_peft", "load_peft", "export_merged", "lora_factors",
]
