"""What the bench scripts share: the W1 workload's prompts, peak memory, the transformers runner, timing
helpers, a tiny model for ``--smoke`` runs and JSON output. Scripts import it as ``bench.common`` after
putting the repository root on ``sys.path`` (``python bench/foo.py`` from a checkout, nothing installed):

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import common

Only tina_jax's public API is used here (``tina_jax``, ``tina_jax.models``, ``tina_jax.sampling``,
``tina_jax.rl``, ``tina_jax.adapters``), so a refactor of the library's internals cannot break it silently:
``tests/test_bench_smoke.py`` runs every script on a tiny model.
"""
from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m-instruct"
W1_RECIPE = REPO / "configs" / "smollm2_arith_cpu.yaml"  # W1 = the default recipe's workload

# A tiny random Qwen2-shaped model (HF config keys) for --smoke runs of scripts that build random weights.
TINY_HF_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, model_type="qwen2",
                      architectures=["Qwen2ForCausalLM"])


# ------------------------------------------------------------------------------------------------
# W1: SmolLM2-135M-Instruct, 8 chat prompts "What is a + b?" x G=8, 48 new tokens
# ------------------------------------------------------------------------------------------------
def w1_messages(num: int = 8, seed: int = 0) -> list[list[dict]]:
    """W1's chat prompts: "What is {a} + {b}? Give the final answer as a number." with a, b drawn by
    ``random.Random(seed).randint(10, 99)`` (the same numbers as ``random.seed(0)`` in earlier versions)."""
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append([{"role": "user", "content": f"What is {a} + {b}? Give the final answer as a number."}])
    return out


def w1_prompt_ids(tokenizer, num: int = 8) -> list[list[int]]:
    """W1's prompts rendered with the tokenizer's chat template (``tina_jax.sampling.encode_prompts``)."""
    from tina_jax.sampling import encode_prompts

    return encode_prompts(tokenizer, w1_messages(num))


def load_model(source: str = DEFAULT_MODEL, **kw):
    """``tina_jax.load_model``: the embedded SmolLM2 by default, or any source (a tiny model dir in tests)."""
    import tina_jax

    return tina_jax.load_model(source, **kw)


def tiny_model_config(dtype: str = "float32", remat: bool = False, **overrides):
    """A tiny random-weight ``ModelConfig`` (2 layers, hidden 64, vocab 256) for --smoke shapes."""
    from tina_jax.models import ModelConfig

    return ModelConfig.from_hf(dict(TINY_HF_CONFIG, **overrides), param_dtype=dtype, compute_dtype=dtype,
                               remat=remat)


def registry_model_config(name: str, dtype: str = "bfloat16", remat: bool = False, **overrides):
    """The ``ModelConfig`` of a registry model (``tina_jax.models.REGISTRY``), e.g. a Qwen2.5-1.5B shape."""
    from tina_jax.models import REGISTRY, ModelConfig

    hf = dict(REGISTRY[name].hf_config, **overrides)
    return ModelConfig.from_hf(hf, param_dtype=dtype, compute_dtype=dtype, remat=remat)


def synthetic_grpo_batch(vocab_size: int, prompt_ids, prompt_mask, completion_len: int, seed: int = 0) -> dict:
    """A grpo_step batch on given (row-repeated) prompts: random completion tokens, completion lengths
    uniform in [C/2, C], normal advantages and negative sampler logprobs."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    b, c = len(prompt_ids), completion_len
    lengths = rng.integers(c // 2, c + 1, b)
    return {"prompt_ids": jnp.asarray(prompt_ids, jnp.int32), "prompt_mask": jnp.asarray(prompt_mask, jnp.int32),
            "completion_ids": jnp.asarray(rng.integers(0, vocab_size, (b, c)), jnp.int32),
            "completion_mask": jnp.asarray(np.arange(c)[None] < lengths[:, None], jnp.int32),
            "advantages": jnp.asarray(rng.normal(size=b), jnp.float32),
            "sampler_logprobs": jnp.asarray(-rng.exponential(size=(b, c)), jnp.float32)}


def field_lists(examples: list[dict], repeat: int) -> dict[str, list]:
    """Each example's fields (solution, answer, ...) repeated for its ``repeat`` completions: the keyword
    arguments reward functions take (rows group-major, as ``generate`` returns them)."""
    keys = [k for k in examples[0] if k not in ("prompt_ids", "prompt_text")]
    return {k: [ex.get(k) for ex in examples for _ in range(repeat)] for k in keys}


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def rss_bytes() -> int | None:
    """Current resident set size (VmRSS), in bytes (None off Linux)."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``/proc/self/clear_refs`` 5), so a later ``peak_rss_bytes``
    measures what came after (e.g. the training step, not the model loader). False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first accelerator (None on CPU, where XLA keeps no such statistic)."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu" or not hasattr(dev, "memory_stats"):
        return None
    return (dev.memory_stats() or {}).get("peak_bytes_in_use")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def block(x):
    """``jax.block_until_ready`` for any pytree (returns it)."""
    import jax

    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``, waiting for every array in the result."""
    t0 = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t0, out


def timed(fn: Callable[[int], Any], repeats: int) -> tuple[float, float, list[float]]:
    """(first call s incl. compile, median steady s, steady times): ``fn(0)`` once, then ``fn(1..repeats)``."""
    first, _ = time_call(lambda: fn(0))
    times = [time_call(lambda i=i: fn(i))[0] for i in range(1, repeats + 1)]
    return first, statistics.median(times), times


def timed_updates(step: Callable, state, batch: dict, repeats: int) -> tuple[float, float, list[float]]:
    """``timed`` for an update ``step(state, batch) -> (state, metrics)`` applied again and again to one batch
    (the state carried over, as a donating jitted step needs): (first s, median steady s, steady times)."""
    holder = {"state": state}

    def run(i):
        holder["state"], m = step(holder["state"], batch)
        return holder["state"].trainable, m

    return timed(run, repeats)


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class CompileCounter:
    """Counts XLA backend compilations (and their seconds) while active: a steady step that compiles is waste.

        with CompileCounter() as cc:
            step()
        cc.count, cc.seconds
    """

    _listening = False
    _active: list["CompileCounter"] = []

    def __init__(self):
        self.count, self.seconds = 0, 0.0

    @classmethod
    def _listener(cls, event: str, duration: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            for c in cls._active:
                c.count += 1
                c.seconds += duration

    def __enter__(self):
        import jax

        if not CompileCounter._listening:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listener)
            CompileCounter._listening = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileCounter._active.remove(self)
        return False


# ------------------------------------------------------------------------------------------------
# transformers: the peer every sampling/forward figure is compared with
# ------------------------------------------------------------------------------------------------
def load_hf_model(source: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu"):
    """The transformers model of a tina_jax model source (the same weights: tina_jax's converted HF directory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tina_jax.models.loading import resolve_source

    return AutoModelForCausalLM.from_pretrained(str(resolve_source(source)),
                                                dtype=getattr(torch, dtype)).to(device).eval()


def hf_generate_runner(hf_model, prompt_ids: list[list[int]], pad_id: int, num_samples: int, new_tokens: int,
                       device: str = "cpu") -> Callable[..., float]:
    """``run(seed, new=new_tokens) -> seconds`` of transformers' ``generate`` on the left-padded prompts:
    sampling at temperature 1 (top-p 1, top-k off), ``num_samples`` per prompt, exactly ``new`` new tokens
    (``min_new_tokens`` = ``max_new_tokens``: stop tokens ignored, as tina_jax's ``stop_token_ids=()``)."""
    import torch

    t = max(map(len, prompt_ids))
    ids = torch.full((len(prompt_ids), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), t), dtype=torch.long)
    for i, x in enumerate(prompt_ids):
        ids[i, t - len(x):] = torch.tensor(x)
        mask[i, t - len(x):] = 1
    ids, mask = ids.to(device), mask.to(device)

    def run(seed: int, new: int = new_tokens) -> float:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf_model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                    top_k=0, num_return_sequences=num_samples, max_new_tokens=new,
                                    min_new_tokens=new, pad_token_id=pad_id)
        if device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert out.shape == (len(prompt_ids) * num_samples, t + new), f"transformers returned {tuple(out.shape)}"
        return dt

    return run


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions ("not installed" where absent)."""
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def write_json(path: str | Path | None, obj: Any, indent: int | None = 2) -> Path | None:
    """Write ``obj`` as JSON to ``path`` (parents created; numpy scalars and paths as numbers/strings)."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=_json_default))
    return path


def print_json(obj: Any) -> None:
    """The one-line JSON result most scripts end with."""
    print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)
