#!/usr/bin/env python
"""Evaluate a model on the papers' benchmarks with the papers' protocols.

    python launch/eval.py --model SOURCE [--adapter PEFT_DIR | --run RUN_DIR [--checkpoint best|last|STEP]]
        --benchmarks aime24,amc23,math500,minerva,olympiadbench,gsm8k,kk --protocol lighteval|gsm8k_strict|kk|greedy
        [--samples N] [--seeds K] [--limit N] [--max-new-tokens N] [--out DIR] [key=value ...]
    python launch/eval.py --config eval.yaml [key=value ...]        # the same keys in a YAML mapping
    python launch/eval.py --compare A/results.json B/results.json

SOURCE is anything ``load_model`` takes (HF directory, .gguf, registry name, hub id). ``--adapter`` takes a
PEFT LoRA directory (ours or a released one); ``--run`` evaluates a training run's checkpoint (its config
names the model). key=value overrides: temperature, top_p, max_rows, batch_tokens, seed, dtype,
cache_dtype, data_dir, timeout. A rerun with the same arguments resumes from ``OUT/samples.jsonl``.
Writes OUT/results.json, results.md, results.png and samples.jsonl.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

_KEYS = {  # key -> type, for --config files and key=value overrides
    "model": str, "adapter": str, "run": str, "checkpoint": str, "benchmarks": str, "protocol": str,
    "samples": int, "seeds": int, "limit": int, "max_new_tokens": int, "out": str, "temperature": float,
    "top_p": float, "max_rows": int, "batch_tokens": int, "seed": int, "dtype": str, "cache_dtype": str,
    "data_dir": str, "timeout": float, "overwrite": bool,
}


class UsageError(ValueError):
    pass


def _settings(args) -> dict:
    import difflib

    import yaml

    s: dict = {}
    if args.config:
        p = Path(args.config)
        if not p.is_file():
            raise UsageError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{p}: the top level must be a mapping of the keys: {', '.join(_KEYS)}")
        if isinstance(data.get("benchmarks"), list):
            data["benchmarks"] = ",".join(map(str, data["benchmarks"]))
        s.update(data)
    for k in _KEYS:
        v = getattr(args, k, None)
        if v is not None and v is not False:
            s[k] = v
    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value")
        k, raw = item.split("=", 1)
        s[k.strip()] = yaml.safe_load(raw)
    for k, v in list(s.items()):
        if k not in _KEYS:
            near = difflib.get_close_matches(k, list(_KEYS), n=1)
            raise UsageError(f"unknown key {k!r}; " + (f"did you mean {near[0]!r}? " if near else "")
                             + f"valid keys: {', '.join(_KEYS)}")
        if v is None:
            continue
        tp = _KEYS[k]
        try:
            s[k] = v if isinstance(v, tp) else (tp(v) if tp is not bool else bool(v))
        except (TypeError, ValueError):
            raise UsageError(f"{k}: expected {tp.__name__}, got {v!r}") from None
    if not s.get("benchmarks"):
        raise UsageError("--benchmarks is required (e.g. --benchmarks gsm8k,math500)")
    if not (s.get("model") or s.get("run")):
        raise UsageError("give --model SOURCE or --run RUN_DIR")
    if s.get("adapter") and s.get("run"):
        raise UsageError("--adapter and --run are exclusive (a run's checkpoint holds its adapter)")
    return s


def _load(s: dict, console):
    import tina_jax
    from tina_jax import adapters

    if s.get("run"):
        from tina_jax.trainer import load_run_policy

        model, params, info = load_run_policy(s["run"], s.get("checkpoint", "best"), console=console)
        if s.get("model") and s["model"] != info["source"]:
            raise UsageError(f"--model {s['model']} differs from the run's model {info['source']}")
        info["name"] = f"{Path(s['run']).name}@{info['checkpoint']}"
        return model, params, info
    model = tina_jax.load_model(s["model"], dtype=s.get("dtype"))
    info = {"source": s["model"], "name": Path(s["model"]).name or s["model"], "dtype": str(model.config.param_dtype)}
    params = None
    if s.get("adapter"):
        ad = adapters.load_peft(s["adapter"], model.config, model.params)
        params = adapters.apply(model.params, ad)
        info.update(adapter=str(s["adapter"]), name=f"{info['name']}+{Path(s['adapter']).name}")
    return model, params, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file with the keys below (command-line flags win)")
    ap.add_argument("--model", help="HF directory, .gguf file, registry name or hub id")
    ap.add_argument("--adapter", help="a PEFT LoRA directory applied on top of --model")
    ap.add_argument("--run", help="a training run directory: evaluate its checkpoint")
    ap.add_argument("--checkpoint", help="with --run: best (default), last or a step number")
    ap.add_argument("--benchmarks", help="comma-separated: aime24,amc23,math500,minerva,olympiadbench,gsm8k,kk")
    ap.add_argument("--protocol", help="lighteval, gsm8k_strict, kk or greedy (default greedy)")
    ap.add_argument("--samples", type=int, help="completions per problem (avg@n, pass@k, maj@k)")
    ap.add_argument("--seeds", type=int, help="independent sampling runs (mean and std over them)")
    ap.add_argument("--limit", type=int, help="the first N problems of each benchmark")
    ap.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="generation budget")
    ap.add_argument("--out", help="output directory (default runs/eval/<model>-<protocol>)")
    ap.add_argument("--overwrite", action="store_true", help="discard samples cached in --out")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--debug", action="store_true", help="print tracebacks")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two results.json files and exit")
    ap.add_argument("overrides", nargs="*", help="key=value (temperature, top_p, max_rows, batch_tokens, ...)")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=os.environ.get("TINA_JAX_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")

    from tina_jax import evaluation
    from tina_jax.models import CheckpointError
    from tina_jax.trainer import TrainingError

    if args.compare:
        try:
            print(evaluation.compare(*args.compare))
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot compare: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        s = _settings(args)
    except UsageError as e:
        print(f"usage error: {e}", file=sys.stderr)
        return 2
    try:
        model, params, info = _load(s, print)
        protocol = s.get("protocol", "greedy")
        out = s.get("out") or f"runs/eval/{info['name'].replace('/', '_')}-{protocol}"
        res = evaluation.evaluate(
            model, s["benchmarks"], protocol, params=params, samples=s.get("samples"), seeds=s.get("seeds"),
            limit=s.get("limit"), max_new_tokens=s.get("max_new_tokens"), temperature=s.get("temperature"),
            top_p=s.get("top_p"), out_dir=out, model_info=info, max_rows=s.get("max_rows", 64),
            batch_tokens=s.get("batch_tokens", 1 << 20), seed=s.get("seed", 0), data_dir=s.get("data_dir"),
            cache_dtype=s.get("cache_dtype"), timeout=s.get("timeout", 10.0), overwrite=s.get("overwrite", False),
            progress=not args.no_progress)
    except (UsageError, evaluation.EvalError, CheckpointError, TrainingError, FileNotFoundError, ValueError) as e:
        if args.debug:
            raise
        print(f"evaluation error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: samples so far are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    print(evaluation.results_markdown(res))
    print(f"wrote {out}/results.json, results.md, results.png, samples.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
