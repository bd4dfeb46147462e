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
    ap.add_argument("--no-memory-plan", action="store_true",
                    help="with --dry-run: skip compiling the programs for XLA's memory analysis (slow for big models)")
    ap.add_argument("--no-resume", action="store_true", help="start fresh even if the run dir has checkpoints")
    ap.add_argument("--overwrite", action="store_true",
                    help="with --no-resume: move an existing run in train.run_dir aside and start over")
    ap.add_argument("--debug", action="store_true", help="print full tracebacks instead of one-line errors")
    ap.add_argument("--coordinator", help="multi-process run: HOST:PORT of process 0 (jax.distributed)")
    ap.add_argument("--num-processes", type=int, help="multi-process run: number of processes")
    ap.add_argument("--process-id", type=int, help="multi-process run: this process's index in [0, N)")
    args = ap.parse_intermixed_args(argv)  # key=value overrides may come before or after the flags
    logging.basicConfig(level=os.environ.get("TINA_JAX_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")

    from tina_jax.config import ConfigError, load_config
    from tina_jax import trainer
    from tina_jax.run_dir import RunDirError

    try:
        cfg = load_config(args.config, args.overrides, strict_overrides=True)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not args.dry_run:
        from tina_jax import distributed

        try:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except ValueError as e:
            print(f"multi-process setup error: {e}", file=sys.stderr)
            return 2
    try:
        if args.dry_run:
            trainer.dry_run(cfg, memory_plan=not args.no_memory_plan)
            return 0
        trainer.train(cfg, resume=not args.no_resume, overwrite=args.overwrite)
    except (trainer.TrainingError, RunDirError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line for the user; the traceback with --debug / in a file
        if args.debug:
            raise
        import traceback

        log_file = Path(cfg.train.run_dir) / "error.log"
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(traceback.format_exc())
            where = f"traceback in {log_file}"
        except OSError:
            where = "rerun with --debug for the traceback"
        print(f"{'dry run' if args.dry_run else 'training'} failed: {type(e).__name__}: {e} ({where})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
