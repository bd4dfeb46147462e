#!/usr/bin/env python
"""The compiled memory-plan table of the paper recipes (``tina_jax.memory_plan``), computed on CPU.

    python bench/memory_plan.py [--recipes tina_open_rs2,open_rs3_full] [--devices 1,4,8] [--out FILE.json]

Each (recipe, device count) lowers and compiles the rollout and grpo_step programs on abstract shapes with
the recipe's mesh over that many (fake CPU) devices, and prints the per-device bytes and the devices it fits.
Full-parameter recipes are planned with FSDP over the devices (mesh [1, -1, 1]), adapter recipes with data
parallelism (their own mesh). Needs no weights and no network (the registry holds the model configs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = {"tina_open_rs2": [1, 2, 8], "tina_open_rs3": [1, 2, 8], "open_rs3_full": [1, 4, 8],
           "tinylora_gsm8k": [1, 8]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(DEFAULT), help="names in configs/ or paths to .yaml files")
    ap.add_argument("--devices", default=None, help="device counts for every recipe (default: per recipe)")
    ap.add_argument("--out", default="bench/results/memory_plan.json")
    ap.add_argument("overrides", nargs="*", help="config overrides applied to every recipe (key=value)")
    args = ap.parse_args(argv)
    counts = {r: ([int(x) for x in args.devices.split(",")] if args.devices else DEFAULT.get(Path(r).stem, [1]))
              for r in args.recipes.split(",")}
    most = max(max(v) for v in counts.values())
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={most}")

    from tina_jax.config import load_config
    from tina_jax.memory_plan import DEVICE_MEMORY, format_plan, memory_plan

    rows, failed = [], 0
    for recipe, devs in counts.items():
        path = Path(recipe) if recipe.endswith(".yaml") else ROOT / "configs" / f"{recipe}.yaml"
        recipe = path.stem
        for n in devs:
            extra = ["mesh.shape=[1,-1,1]"] if recipe.endswith("_full") else []
            cfg = load_config(path, extra + list(args.overrides))
            t0 = time.time()
            try:
                plan = memory_plan(cfg, devices=n)
            except Exception as e:  # noqa: BLE001 - report and go on with the other rows
                print(f"{recipe} x{n}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                failed += 1
                continue
            plan.update(recipe=recipe, compile_s=round(time.time() - t0, 1))
            rows.append(plan)
            print(f"{recipe} x{n}: {format_plan(plan)} [{plan['compile_s']} s]", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    names = list(DEVICE_MEMORY)
    print("\n| recipe | devices | mesh (data, fsdp, tensor) | rollout GB/dev | grpo_step GB/dev | peak GB/dev | "
          + " | ".join(names) + " |")
    print("|---" * (6 + len(names)) + "|")
    for p in rows:
        m = p["mesh"]
        print(f"| {p['recipe']} | {p['devices']} | ({m['data']}, {m['fsdp']}, {m['tensor']}) | "
              f"{p['rollout']['total'] / 1e9:.1f} | {p['grpo_step']['total'] / 1e9:.1f} | "
              f"{p['peak_bytes_per_device'] / 1e9:.1f} | " + " | ".join("yes" if p["fits"][k] else "no" for k in names)
              + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
