#!/usr/bin/env python
"""Train a model with GRPO as a YAML recipe says.

    python launch/train.py --config configs/smollm2_arith_cpu.yaml [key=value ...] [--dry-run] [--no-resume]

Multi-process (one command per process; TPU pods, SLURM and Open MPI are detected without flags):

    python launch/train.py --config ... --coordinator HOST:PORT --num-processes N --process-id I

Overrides use dotted keys (``optim.lr=2e-5 train.max_steps=10``); values are parsed as YAML. A run
directory with a checkpoint is resumed unless ``--no-resume`` is given.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-5")
    ap.add_argument("--dry-run", action="store_true", help="build everything that does not need the weights")
    ap.add_argument("--no-resume", action="store_true", help="start fresh even if the run dir has checkpoints")
    ap.add_argument("--coordinator", help="multi-process run: HOST:PORT of process 0 (jax.distributed)")
    ap.add_argument("--num-processes", type=int, help="multi-process run: number of processes")
    ap.add_argument("--process-id", type=int, help="multi-process run: this process's index in [0, N)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("TINA_JAX_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")

    from tina_jax.config import ConfigError, load_config
    from tina_jax import trainer

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        trainer.dry_run(cfg)
        return 0
    from tina_jax import distributed

    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        print(f"multi-process setup error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train(cfg, resume=not args.no_resume)
    except trainer.TrainingError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(str(e), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
