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
import dataclasses
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The keys of ``--config`` files, flags and key=value overrides (read and checked by
    ``tina_jax.config.load_config``: unknown keys name the nearest valid one, types are checked)."""

    model: str | None = None
    adapter: str | None = None
    run: str | None = None
    checkpoint: str | int = "best"
    benchmarks: str | tuple[str, ...] = ()
    protocol: str = "greedy"
    samples: int | None = None
    seeds: int | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    out: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_rows: int = 64
    batch_tokens: int = 1 << 20
    seed: int = 0
    dtype: str | None = None
    cache_dtype: str | None = None
    data_dir: str | None = None
    timeout: float = 10.0
    overwrite: bool = False

    def __post_init__(self):
        if isinstance(self.benchmarks, str):
            object.__setattr__(self, "benchmarks", tuple(b.strip() for b in self.benchmarks.split(",") if b.strip()))
        if not self.benchmarks:
            raise ValueError("--benchmarks is required (e.g. --benchmarks gsm8k,math500)")
        if not (self.model or self.run):
            raise ValueError("give --model SOURCE or --run RUN_DIR")
        if self.adapter and self.run:
            raise ValueError("--adapter and --run are exclusive (a run's checkpoint holds its adapter)")


def _settings(args) -> EvalSettings:
    from tina_jax.config import load_config

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalSettings)
             if getattr(args, f.name, None) not in (None, False)}  # command-line flags win over the file
    return load_config(args.config, args.overrides, strict_overrides=True, schema=EvalSettings, updates=flags)


class UsageError(ValueError):
    pass


def _load(s: EvalSettings, console):
    import tina_jax
    from tina_jax import adapters

    if s.run:
        from tina_jax.trainer import load_run_policy

        model, params, info = load_run_policy(s.run, s.checkpoint, console=console)
        if s.model and s.model != info["source"]:
            raise UsageError(f"--model {s.model} differs from the run's model {info['source']}")
        info["name"] = f"{Path(s.run).name}@{info['checkpoint']}"
        return model, params, info
    model = tina_jax.load_model(s.model, dtype=s.dtype)
    info = {"source": s.model, "name": Path(s.model).name or s.model, "dtype": str(model.config.param_dtype)}
    params = None
    if s.adapter:
        ad = adapters.load_peft(s.adapter, model.config, model.params)
        params = adapters.apply(model.params, ad)
        info.update(adapter=str(s.adapter), name=f"{info['name']}+{Path(s.adapter).name}")
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
    from tina_jax.config import ConfigError
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
    except ConfigError as e:
        print(f"usage error: {e}", file=sys.stderr)
        return 2
    from tina_jax import runtime

    runtime.enable_compilation_cache("auto")  # a re-run of the same benchmark shapes skips compiling
    try:
        model, params, info = _load(s, print)
        out = s.out or f"runs/eval/{info['name'].replace('/', '_')}-{s.protocol}"
        res = evaluation.evaluate(
            model, list(s.benchmarks), s.protocol, params=params, samples=s.samples, seeds=s.seeds, limit=s.limit,
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, out_dir=out, model_info=info,
            max_rows=s.max_rows, batch_tokens=s.batch_tokens, seed=s.seed, data_dir=s.data_dir,
            cache_dtype=s.cache_dtype, timeout=s.timeout, overwrite=s.overwrite, progress=not args.no_progress)
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
