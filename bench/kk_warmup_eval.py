"""K&K accuracy by number of people on held-out generated puzzles, for the warm-up comparison (#11).

Greedy decoding, Logic-RL's K&K check (format and every role right) with the prompt recipe and generation
length of the given config; held-out puzzles are ``synthetic:kk<people>`` eval puzzles (base seed
2 * data.seed + 1, none sharing its statements with the config's train split).

    python bench/kk_warmup_eval.py --config configs/smollm2_kk_sft_cpu.yaml --base --n 30 --out base.json
    python bench/kk_warmup_eval.py --config configs/smollm2_kk_sft_cpu.yaml --run runs/smollm2_kk_sft_cpu --n 30
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="recipe giving data.train (puzzle sizes), prompt recipe, "
                                                    "rollout.max_new_tokens")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--base", action="store_true", help="the config's model.source, untrained")
    g.add_argument("--run", help="a run directory (its checkpoint's weights)")
    ap.add_argument("--checkpoint", default="last")
    ap.add_argument("--n", type=int, default=30, help="held-out puzzles per number of people")
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--out")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. model.source=DIR in tests)")
    a = ap.parse_args(argv)

    import jax
    import numpy as np

    from tina_jax import config as config_lib, sampling as smp, trainer
    from tina_jax.data import kk, pipeline
    from tina_jax.models import load_model

    cfg = config_lib.load_config(a.config, a.overrides)
    t0 = time.time()
    if a.base:
        model = load_model(cfg.model.source, dtype=cfg.model.dtype)
        params, name = model.params, f"base {cfg.model.source}"
    else:
        model, params, info = trainer.load_run_policy(a.run, a.checkpoint)
        name = f"{a.run}@{info['checkpoint']}"
    tok = model.tokenizer
    task = cfg.data.train.split(":", 1)[1]
    sizes = kk.parse_source(task)[0]
    _, held = kk.synthetic_splits(task, cfg.data.n_train or 0, a.n * len(sizes), cfg.data.seed)
    ex, _ = pipeline.prepare_examples(held, tok, cfg.data.prompt_recipe, field_map=cfg.data.field_map or None,
                                      required_fields=("solution_text_format",),
                                      max_prompt_length=cfg.data.max_prompt_length, keep_fields=("num_people",))
    _, is_correct = trainer.correctness_fn(cfg)
    s = config_lib.sampling_config(cfg, temperature=0.0, num_samples=1)  # greedy, the recipe's budget
    rows = []
    for i in range(0, len(ex), a.batch):
        chunk = ex[i:i + a.batch]
        gen = smp.generate(model, [e["prompt_ids"] for e in chunk], s, jax.random.key(i), params=params)
        ok = is_correct(gen.texts, solution_text_format=[e["solution_text_format"] for e in chunk])
        for e, t, c, n in zip(chunk, gen.texts, ok, np.asarray(gen.lengths)):
            rows.append({"people": e["num_people"], "correct": bool(c), "answer_tag": "</answer>" in t,
                         "length": int(n)})
    res = {"model": name, "config": a.config, "n_per_size": a.n, "seconds": round(time.time() - t0, 1),
           "by_people": {}}
    for p in sizes:
        r = [x for x in rows if x["people"] == p]
        res["by_people"][str(p)] = {"accuracy": float(np.mean([x["correct"] for x in r])),
                                    "answer_tag_rate": float(np.mean([x["answer_tag"] for x in r])),
                                    "mean_length": float(np.mean([x["length"] for x in r])), "n": len(r)}
    res["accuracy"] = float(np.mean([x["correct"] for x in rows]))
    print(json.dumps(res, indent=1))
    common.write_json(a.out, res, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
