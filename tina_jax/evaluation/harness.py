"""The evaluation run: benchmarks x protocol -> graded samples (the resume cache) -> metrics -> reports.

    results = evaluate(model, ["gsm8k", "math500"], "greedy", limit=50, out_dir="runs/eval/smollm2")

How it runs
-----------
1. Each benchmark's problems are rendered with the protocol's prompt recipe and the model's chat
   template (``samples.jsonl`` keeps the rendered text exactly as tokenised).
2. Problems are sorted by prompt length and cut into batches under a budget: ``rows = problems x n <=
   max_rows`` and ``rows x (prompt bucket + max_new_tokens) <= batch_tokens``; the number of problems in
   a batch is a power of two (the tail is cut into smaller powers of two, e.g. 100 = 64 + 32 + 4), so few
   programs compile and no row is padding. Each problem's prompt is prefilled once for its n samples (``sampling.generate``).
3. Seed s of batch b samples with ``fold_in(fold_in(key(seed + s), crc32(benchmark)), b)``: the same
   arguments give the same batches and the same tokens.
4. ``samples.jsonl`` (one line per problem, sample and seed) is appended batch by batch and is the
   resume cache: a rerun with the same arguments generates only what is missing (a torn last line is
   dropped). ``eval_config.json`` records what the cached samples depend on; a rerun whose settings
   differ is refused with the differing keys.
5. Metrics (``tina_jax.evaluation.metrics``) per benchmark and seed, mean and std over seeds, an average
   row across benchmarks; ``results.json``, ``results.md`` and ``results.png`` are written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tina_jax.evaluation import checkers
from tina_jax.evaluation import metrics as M
from tina_jax.evaluation.benchmarks import Problem, get_benchmark, load_benchmark
from tina_jax.evaluation.protocols import Protocol, get_protocol

__all__ = ["EvalError", "evaluate", "compare", "flat_metrics", "plan_batches"]

_RESULT_FORMAT = 1


class EvalError(RuntimeError):
    """The evaluation cannot run as asked; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------------
def plan_batches(prompt_lengths: Sequence[int], n: int, max_new_tokens: int, max_rows: int,
                 batch_tokens: int, prompt_limit: int | None = None) -> list[list[int]]:
    """Problem indices per batch: sorted by prompt length, at most ``max_rows`` rows (problems x n) and
    ``batch_tokens`` row-tokens (rows x (prompt bucket + max_new_tokens)) per batch, the problem count a
    power of two (the tail is cut into smaller powers of two, so no batch needs padding rows)."""
    from tina_jax.sampling import prompt_bucket

    order = sorted(range(len(prompt_lengths)), key=lambda i: (prompt_lengths[i], i))
    start_b = 1
    while start_b * 2 * n <= max_rows:
        start_b *= 2
    batches, pos = [], 0
    while pos < len(order):
        b = start_b
        while b > len(order) - pos:  # the tail in power-of-two pieces: no padding rows
            b //= 2
        while b > 1:
            last = order[min(pos + b, len(order)) - 1]
            p = prompt_bucket(prompt_lengths[last], prompt_limit)
            if b * n * (p + max_new_tokens) <= batch_tokens:
                break
            b //= 2
        batches.append(order[pos:pos + b])
        pos += b
    return batches


def _batch_key(seed: int, benchmark: str, batch_index: int):
    import jax

    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(benchmark.encode()) & 0x7FFFFFFF)
    return jax.random.fold_in(key, batch_index)


# ------------------------------------------------------------------------------------------------
# The sample cache
# ------------------------------------------------------------------------------------------------
def _read_cache(path: Path) -> dict[tuple, dict]:
    """Samples already on disk, keyed (benchmark, id, seed, sample). A torn or invalid line (a run killed
    mid-write) is dropped and the file rewritten without it."""
    done: dict[tuple, dict] = {}
    if not path.is_file():
        return done
    good, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                key = (row["benchmark"], str(row["id"]), int(row["seed"]), int(row["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
                continue
            if not line.endswith("\n"):
                bad += 1
                continue
            done[key] = row
            good.append(line)
    if bad:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(good), encoding="utf-8")
        os.replace(tmp, path)
    return done


def _fingerprint(model_info: dict, proto: Protocol, max_rows: int, batch_tokens: int, seed: int) -> dict:
    """What cached samples depend on (not the limit, the seed count or the benchmark list: those add or
    remove whole problems)."""
    p = proto.to_dict()
    p.pop("seeds", None)
    return {"model": model_info, "protocol": p, "max_rows": max_rows, "batch_tokens": batch_tokens,
            "seed": seed}


def _check_fingerprint(out: Path, fp: dict, overwrite: bool) -> None:
    path = out / "eval_config.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(fp)):
            diff = sorted(_diff_keys(old, json.loads(json.dumps(fp))))
            raise EvalError(f"{out} holds samples of a different evaluation (differs in: {', '.join(diff)}); "
                            "use another --out, or --overwrite to discard them")
    if overwrite:
        for name in ("samples.jsonl", "results.json", "results.md", "results.png"):
            (out / name).unlink(missing_ok=True)
    path.write_text(json.dumps(fp, indent=2, sort_keys=True))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ------------------------------------------------------------------------------------------------
# Environment facts for the results file
# ------------------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _device() -> dict:
    import jax

    d = jax.devices()
    return {"platform": d[0].platform, "kind": getattr(d[0], "device_kind", d[0].platform), "count": len(d)}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Bench:
    name: str
    problems: list[Problem]
    prompt_ids: list[list[int]]
    prompt_texts: list[str]
    checker: str
    prefix: str
    gold_kind: str


def _render(model, proto: Protocol, name: str, limit: int | None, data_dir) -> _Bench:
    from tina_jax.data.prompts import build_messages, get_recipe, render_prompts

    bench = get_benchmark(name)
    if bench.family not in proto.benchmarks:
        raise EvalError(f"protocol {proto.name!r} does not apply to benchmark {name!r} ({bench.family}); it "
                        f"grades {', '.join(proto.benchmarks)} sets. Try --protocol greedy"
                        + (" or kk" if bench.family == "kk" else ""))
    problems = load_benchmark(name, limit=limit, data_dir=data_dir)
    if not problems:
        raise EvalError(f"benchmark {name!r} has no problems (limit {limit})")
    recipe = get_recipe(proto.recipe_for(bench.family))
    msgs = [build_messages({recipe.field: p.question}, recipe) for p in problems]
    ids, texts = render_prompts(model.tokenizer, msgs)
    return _Bench(name, problems, ids, texts, proto.checker_for(bench.family), recipe.assistant_prefix or "",
                  bench.gold_kind)


def evaluate(model, benchmarks: Sequence[str], protocol: str | Protocol = "greedy", *, params: Any = None,
             samples: int | None = None, seeds: int | None = None, limit: int | None = None,
             max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
             out_dir: str | os.PathLike | None = None, model_info: dict | None = None, max_rows: int = 64,
             batch_tokens: int = 1 << 20, seed: int = 0, data_dir: str | os.PathLike | None = None,
             cache_dtype: str | None = None, timeout: float = 10.0, overwrite: bool = False,
             progress: bool = True, console: Callable[[str], None] = print, mesh=None) -> dict:
    """Evaluate ``model`` (``load_model``'s result; ``params`` replaces its weights, e.g. with an adapter
    applied) on ``benchmarks`` under ``protocol``; returns the results dict (also written to ``out_dir``).

    ``samples``, ``seeds``, ``max_new_tokens``, ``temperature`` and ``top_p`` override the protocol's
    defaults. ``limit`` keeps the first N problems of each benchmark. ``out_dir=None`` keeps everything in
    memory (no resume). See the module docstring for batching, seeding and the resume cache.

    ``mesh``: the device mesh of sharded ``params``. In a multi-process run every process calls
    ``evaluate`` alike: the generation is one program over all devices, each process grades its share of
    the rows, and only process 0 writes ``out_dir``.
    """
    from tina_jax import distributed

    import jax
    from tina_jax.sampling import SamplingConfig, default_stop_token_ids, generate

    if model.tokenizer is None:
        raise EvalError("the model has no tokenizer; evaluation renders prompts with its chat template")
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    proto = proto.replace(samples=samples, seeds=seeds, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p)
    try:
        proto.check()
    except ValueError as e:
        raise EvalError(f"protocol {proto.name}: {e}") from None
    if proto.temperature == 0 and (proto.samples > 1 or proto.seeds > 1):
        console(f"protocol {proto.name} decodes greedily: {proto.samples} samples x {proto.seeds} seeds would be "
                "identical, evaluating 1 x 1 (set a temperature > 0 to sample)")
        proto = proto.replace(samples=1, seeds=1)
    cfg = model.config
    if proto.max_new_tokens >= cfg.max_position_embeddings:
        raise EvalError(f"max_new_tokens={proto.max_new_tokens} leaves no room for the prompt in this model's "
                        f"{cfg.max_position_embeddings}-token context; pass --max-new-tokens below it")
    if isinstance(benchmarks, str):
        benchmarks = [b.strip() for b in benchmarks.split(",") if b.strip()]
    if not benchmarks:
        raise EvalError("no benchmarks given")
    for b in benchmarks:
        try:
            get_benchmark(b)
        except ValueError as e:
            raise EvalError(str(e)) from None
    model_info = dict(model_info or {})
    params = model.params if params is None else params
    n = proto.samples
    prompt_limit = cfg.max_position_embeddings - proto.max_new_tokens

    out = Path(out_dir) if out_dir is not None else None
    cache: dict[tuple, dict] = {}
    primary = distributed.is_primary()
    if out is not None:
        if primary:
            out.mkdir(parents=True, exist_ok=True)
            _check_fingerprint(out, _fingerprint(model_info, proto, max_rows, batch_tokens, seed), overwrite)
            cache = _read_cache(out / "samples.jsonl")  # drops (and rewrites away) a torn last line
        distributed.barrier(f"eval-open:{out}")
        if not primary:
            cache = _read_cache(out / "samples.jsonl")
        distributed.barrier(f"eval-cache-read:{out}")  # every process plans the same work

    rendered = []
    for name in benchmarks:
        try:
            rb = _render(model, proto, name, limit, data_dir)
        except (ValueError, FileNotFoundError) as e:
            raise EvalError(str(e)) from None
        too_long = [p.id for p, x in zip(rb.problems, rb.prompt_ids) if len(x) > prompt_limit]
        if too_long:
            raise EvalError(f"{name}: {len(too_long)} prompts (e.g. id {too_long[0]}) are longer than the "
                            f"{prompt_limit} tokens left by max_new_tokens={proto.max_new_tokens}; lower it")
        rendered.append(rb)

    stop = default_stop_token_ids(cfg, model.tokenizer)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    sampling = SamplingConfig(max_new_tokens=proto.max_new_tokens, temperature=proto.temperature,
                              top_p=proto.top_p, num_samples=n, stop_token_ids=stop, pad_token_id=pad,
                              cache_dtype=cache_dtype, max_prompt_length=prompt_limit)

    # Work list: (benchmark, seed, batch index, problem indices) still missing from the cache.
    work = []
    for rb in rendered:
        batches = plan_batches([len(x) for x in rb.prompt_ids], n, proto.max_new_tokens, max_rows, batch_tokens,
                               prompt_limit)
        for s in range(proto.seeds):
            for bi, idx in enumerate(batches):
                if any((rb.name, rb.problems[i].id, s, j) not in cache for i in idx for j in range(n)):
                    work.append((rb, s, bi, idx, 1 << (len(idx) - 1).bit_length()))  # pad to a power of two
    total_rows = sum(len(w[3]) * n for w in work)
    cached = sum(len(rb.problems) for rb in rendered) * n * proto.seeds - total_rows
    if cached:
        console(f"resuming: {cached} completions found in {out / 'samples.jsonl'}, {total_rows} to generate")

    bar = None
    if progress and total_rows:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_rows, unit="completion", desc=f"eval {proto.name}", dynamic_ncols=True)
    t0 = time.time()
    gen_s, gen_tokens, work_slots, used_slots = 0.0, 0, 0, 0
    fh = open(out / "samples.jsonl", "a", encoding="utf-8") if out is not None and primary else None
    try:
        for rb, s, bi, idx, width in work:
            padded = list(idx) + [idx[-1]] * (width - len(idx)) if len(idx) < width else list(idx)
            tg = time.time()
            gen = generate(model, [rb.prompt_ids[i] for i in padded], sampling,
                           _batch_key(seed + s, rb.name, bi), params=params, mesh=mesh)
            lengths = np.asarray(gen.lengths)
            truncated = np.asarray(gen.truncated)
            gen_s += time.time() - tg
            gen_tokens += int(lengths.sum())
            work_slots += int(lengths.size * lengths.max())
            used_slots += int(lengths.sum())
            rows = [(i, j, r) for k, i in enumerate(idx) for j, r in [(j, k * n + j) for j in range(n)]]
            texts = [gen.texts[r] for _, _, r in rows]
            golds = [rb.problems[i].gold for i, _, _ in rows]
            lo, hi = distributed.rows_of(len(rows))  # each process grades its share of the rows
            part = checkers.grade(rb.checker, texts[lo:hi], golds[lo:hi], [rb.gold_kind] * (hi - lo),
                                  timeout=timeout, prefix=rb.prefix)
            parts = distributed.gather_json([[int(c) for c in part[0]], list(part[1])])
            correct = [c for p in parts for c in p[0]]
            extracted = [e for p in parts for e in p[1]]
            lines = []
            for (i, j, r), c, e in zip(rows, correct, extracted):
                p = rb.problems[i]
                key = (rb.name, p.id, s, j)
                if key in cache:
                    continue
                row = {"benchmark": rb.name, "id": p.id, "sample": j, "seed": s, "group": p.group,
                       "prompt": rb.prompt_texts[i], "completion": gen.texts[r], "extracted": e, "gold": p.gold,
                       "correct": int(c), "num_tokens": int(lengths[r]), "truncated": bool(truncated[r])}
                cache[key] = row
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            if fh is not None:
                fh.write("".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
            if bar is not None:
                bar.update(len(idx) * n)
                bar.set_postfix_str(f"{gen_tokens / max(gen_s, 1e-9):.0f} tok/s")
    finally:
        if fh is not None:
            fh.close()
        if bar is not None:
            bar.close()
    wall = time.time() - t0

    results = _results(rendered, cache, proto, model_info, limit, max_rows, batch_tokens, seed)
    results["run"] = {"wall_s": wall, "generate_s": gen_s, "generated_completions": total_rows,
                      "cached_completions": cached, "generated_tokens": gen_tokens,
                      "tokens_per_s": gen_tokens / gen_s if gen_s > 0 else None,
                      "idle_row_frac": 1 - used_slots / work_slots if work_slots else None,
                      "device": _device(), "git_commit": _git_commit()}
    if out is not None and primary:
        _write_reports(out, results)
    return results


def _results(rendered: list[_Bench], cache: dict, proto: Protocol, model_info: dict, limit, max_rows: int,
             batch_tokens: int, seed: int) -> dict:
    from tina_jax import __version__

    n = proto.samples
    res: dict[str, Any] = {"format": _RESULT_FORMAT, "tina_jax_version": __version__, "model": model_info,
                           "protocol": proto.to_dict(),
                           "settings": {"limit": limit, "samples": n, "seeds": proto.seeds, "max_rows": max_rows,
                                        "batch_tokens": batch_tokens, "seed": seed},
                           "benchmarks": {}}
    for rb in rendered:
        per_seed, groups = [], {}
        for s in range(proto.seeds):
            recs = []
            for p in rb.problems:
                rows = [cache[(rb.name, p.id, s, j)] for j in range(n)]
                recs.append({"group": p.group, "correct": [r["correct"] for r in rows],
                             "extracted": [r["extracted"] for r in rows],
                             "num_tokens": [r["num_tokens"] for r in rows],
                             "truncated": [r["truncated"] for r in rows]})
            per_seed.append(M.summarize_seed(recs))
            for g in sorted({r["group"] for r in recs if r["group"] is not None}):
                groups.setdefault(g, []).append(M.summarize_seed([r for r in recs if r["group"] == g]))
        entry = {"num_problems": len(rb.problems), "checker": rb.checker, "metrics": M.over_seeds(per_seed)}
        if groups:
            entry["groups"] = {g: M.over_seeds(v) for g, v in groups.items()}
        res["benchmarks"][rb.name] = entry
    key = f"avg@{n}"
    vals = [b["metrics"][key]["mean"] for b in res["benchmarks"].values()]
    per_seed_avg = np.mean([b["metrics"][key]["values"] for b in res["benchmarks"].values()], axis=0)
    res["average"] = {key: {"mean": float(np.mean(vals)),
                            "std": float(np.std(per_seed_avg, ddof=1)) if len(per_seed_avg) > 1 else 0.0}}
    return res


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def _pm(m: dict, scale: float = 100.0) -> str:
    return f"{m['mean'] * scale:.1f}" + (f" ± {m['std'] * scale:.1f}" if m.get("std") else "")


def results_markdown(res: dict) -> str:
    n = res["settings"]["samples"]
    key = f"avg@{n}"
    names = list(res["benchmarks"])
    p = res["protocol"]
    model = res["model"].get("name") or res["model"].get("source") or "model"
    lines = [f"# Evaluation: {model}", "",
             f"Protocol `{p['name']}` ({p['source']}): T {p['temperature']}, top-p {p['top_p']}, "
             f"{p['max_new_tokens']} new tokens, {n} sample(s) x {res['settings']['seeds']} seed(s)"
             + (f", first {res['settings']['limit']} problems" if res['settings']['limit'] else "") + ".",
             "", f"{key} in %, mean ± std over seeds:", "",
             "| model | " + " | ".join(names) + " | Avg |", "|---" * (len(names) + 2) + "|",
             f"| {model} | " + " | ".join(_pm(res['benchmarks'][b]['metrics'][key]) for b in names)
             + f" | {_pm(res['average'][key])} |", "", "## Details", ""]
    metric_keys = [k for k in next(iter(res["benchmarks"].values()))["metrics"] if k != "num_problems"]
    lines += ["| benchmark | problems | " + " | ".join(metric_keys) + " |", "|---" * (len(metric_keys) + 2) + "|"]
    for b in names:
        m = res["benchmarks"][b]["metrics"]
        cells = [_pm(m[k]) if ("@" in k or k.endswith("frac")) else f"{m[k]['mean']:.0f}" for k in metric_keys]
        lines.append(f"| {b} | {res['benchmarks'][b]['num_problems']} | " + " | ".join(cells) + " |")
        for g, gm in res["benchmarks"][b].get("groups", {}).items():
            cells = [_pm(gm[k]) if ("@" in k or k.endswith("frac")) else f"{gm[k]['mean']:.0f}" for k in metric_keys]
            lines.append(f"| {b}/{g} | {int(gm['num_problems']['mean'])} | " + " | ".join(cells) + " |")
    run = res.get("run", {})
    if run:
        tps = run.get("tokens_per_s")
        lines += ["", f"Wall time {run['wall_s']:.0f} s on {run['device']['count']} x {run['device']['kind']}; "
                  f"{run['generated_tokens']} tokens generated" + (f" at {tps:.0f} tokens/s" if tps else "")
                  + (f"; idle-row fraction {run['idle_row_frac']:.2f}" if run.get("idle_row_frac") is not None
                     else "") + "."]
    return "\n".join(lines) + "\n"


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"avg@{res['settings']['samples']}"
    names = list(res["benchmarks"]) + ["Avg"]
    ms = [res["benchmarks"][b]["metrics"][key] for b in res["benchmarks"]] + [res["average"][key]]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    ax.bar(names, [100 * m["mean"] for m in ms], yerr=[100 * m["std"] for m in ms], capsize=4, color="#4c72b0")
    ax.set_ylabel(f"{key} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{res['model'].get('name') or res['model'].get('source', '')} — {res['protocol']['name']}, "
                 f"{res['settings']['seeds']} seed(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_reports(out: Path, res: dict) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(results_markdown(res))
    _plot(res, out / "results.png")


def flat_metrics(res: dict, prefix: str = "eval") -> dict[str, float]:
    """``{"eval/<benchmark>/<metric>": mean}`` (and ``.../<metric>_std`` with several seeds) for logging."""
    out = {}
    for b, entry in res["benchmarks"].items():
        for k, v in entry["metrics"].items():
            out[f"{prefix}/{b}/{k}"] = v["mean"]
            if v["std"]:
                out[f"{prefix}/{b}/{k}_std"] = v["std"]
    for k, v in res["average"].items():
        out[f"{prefix}/average/{k}"] = v["mean"]
    return out


def compare(a: str | os.PathLike | dict, b: str | os.PathLike | dict) -> str:
    """A side-by-side table of two results files: each metric's mean ± std, the difference, and whether
    it exceeds the seed noise (|diff| > sqrt(std_a^2 + std_b^2); "n/a" with a single seed on both)."""
    ra = a if isinstance(a, dict) else json.loads(Path(a).read_text())
    rb = b if isinstance(b, dict) else json.loads(Path(b).read_text())
    name = lambda r, p: r["model"].get("name") or r["model"].get("source") or str(p)  # noqa: E731
    lines = [f"A: {name(ra, a)} ({ra['protocol']['name']}, {ra['settings']['samples']} x "
             f"{ra['settings']['seeds']})", f"B: {name(rb, b)} ({rb['protocol']['name']}, "
             f"{rb['settings']['samples']} x {rb['settings']['seeds']})", "",
             "| benchmark | metric | A | B | B - A | beyond seed std |", "|---|---|---|---|---|---|"]
    for bench in [x for x in ra["benchmarks"] if x in rb["benchmarks"]]:
        ma, mb = ra["benchmarks"][bench]["metrics"], rb["benchmarks"][bench]["metrics"]
        for k in [k for k in ma if k in mb and ("@" in k)]:
            d = mb[k]["mean"] - ma[k]["mean"]
            noise = (ma[k]["std"] ** 2 + mb[k]["std"] ** 2) ** 0.5
            single = ra["settings"]["seeds"] == 1 and rb["settings"]["seeds"] == 1
            beyond = "n/a (1 seed)" if single else ("yes" if abs(d) > noise else "no")
            lines.append(f"| {bench} | {k} | {_pm(ma[k])} | {_pm(mb[k])} | {100 * d:+.1f} | {beyond} |")
    only = sorted(set(ra["benchmarks"]) ^ set(rb["benchmarks"]))
    if only:
        lines += ["", f"in one file only: {', '.join(only)}"]
    return "\n".join(lines)
