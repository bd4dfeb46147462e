"""Largest absolute weight change between a run's checkpoint and its start (another run, or the base model).

    python bench/kk_weight_change.py runs/smollm2_kk_rlvr_cpu runs/smollm2_kk_sft_cpu
    python bench/kk_weight_change.py runs/smollm2_kk_rlvr_base_cpu base
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def max_change(run: str, ref: str) -> tuple[float, dict]:
    """(max |weight change| between ``run``'s last checkpoint and ``ref`` (a run directory or "base"), info)."""
    import jax
    import numpy as np

    from tina_jax import config as config_lib, trainer
    from tina_jax.models import load_model
    from tina_jax.models.linear import materialize_tree

    _, params, info = trainer.load_run_policy(run, "last", console=lambda s: None)
    if ref == "base":
        cfg = config_lib.load_config(Path(run) / "config.yaml", upgrade=True)
        ref_params = load_model(cfg.model.source, dtype=cfg.model.dtype).params
    else:
        ref_params = materialize_tree(trainer.load_run_policy(ref, "last", console=lambda s: None)[1])
    d = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for a, b in zip(jax.tree.leaves(materialize_tree(params)), jax.tree.leaves(ref_params)))
    return d, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory")
    ap.add_argument("ref", help="the run it started from, or 'base' (its config's model.source)")
    a = ap.parse_args(argv)
    d, info = max_change(a.run, a.ref)
    print(f"{a.run} (step {info['checkpoint']}) vs {a.ref}: max |weight change| = {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
