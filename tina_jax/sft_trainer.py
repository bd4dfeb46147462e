"""The supervised pieces of the training loop (``algorithm: sft``): the step's batch and the step itself.

    summary = trainer.train(load_config("configs/smollm2_kk_sft_cpu.yaml"))

``tina_jax.trainer`` runs SFT with the GRPO loop's own machinery (``setup``, hooks, run directory,
checkpoints, exact resume, metrics, TensorBoard, progress bar showing the loss, plot); this module adds only
what differs: a batch of whole sequences (``make_batch``) and :func:`sft_train_step`.

Data: ``data.train`` records with ``messages``, ``prompt``/``completion`` or the prompt recipe's field +
``completion`` (``tina_jax.data.sft``), rendered with the chat template; held-out accuracy on ``data.eval``
with the rewards' correctness check (as the GRPO loop), and the ``eval`` section's benchmarks.
Resume is exact: the grain loader state, the trainable weights, the optimizer state and the rng are
checkpointed; a step's batch depends on nothing else.
"""
from __future__ import annotations

import math
import time

import numpy as np

from tina_jax.config import RunConfig
from tina_jax.data.run_data import build_sft_data
from tina_jax.rl.sft import pack_sequences

__all__ = ["make_batch", "sft_train_step", "data_line", "build_sft_data", "dry_run_sft"]


def make_batch(cfg: RunConfig, examples: list[dict], pad_id: int, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """The step's batch: one sequence per row, width the longest rounded up to 64 (few compiled shapes), or
    (sft.pack) first-fit packed into rows of sft.max_length. Rows are padded with empty rows (no tokens, no
    loss: the update is unchanged) to a multiple of ``row_multiple``."""
    s = cfg.sft
    seqs = [(ex["input_ids"], ex["loss_mask"]) for ex in examples]
    if s.pack:
        length = s.max_length
        total = sum(len(t) for t, _ in seqs)
        rows = max(1, -(-total // length))
        while True:
            try:
                pack_sequences(seqs, rows, length, pad_id, pack=True)
                break
            except ValueError:
                rows += 1
    else:
        rows = len(seqs)
        length = min(s.max_length, -(-max(len(t) for t, _ in seqs) // 64) * 64)
    rows = -(-rows // row_multiple) * row_multiple
    return pack_sequences(seqs, rows, length, pad_id, pack=s.pack)


def data_line(cfg: RunConfig, rep: dict, n_eval: int) -> str:
    """The console line on the prepared SFT data: kept, dropped or truncated, token lengths."""
    dropped = rep["total"] - rep["kept"]
    return (f"data: {rep['kept']}/{rep['total']} SFT examples kept"
            + (f" ({rep['no_target']} without a target, {rep['overlong']} over sft.max_length "
               f"{cfg.sft.max_length}: {'truncated' if cfg.sft.overlong == 'truncate' else 'dropped'})"
               if dropped or rep["truncated"] else "")
            + f", tokens median {rep['tokens']['median']} max {rep['tokens']['max']}"
            + (f"; {n_eval} eval" if n_eval else ""))


def sft_train_step(run, state, i: int):
    """One supervised update on the loader's next batch of sequences (``tina_jax.trainer.step``)."""
    from tina_jax.trainer import TrainingError

    t0 = time.time()
    examples = next(run.loader)
    batch = make_batch(run.cfg, examples, run.pad_id, run.row_multiple)
    update = int(state.step)
    state, m = run.update(state, run.place(batch))
    m = {k: float(v) for k, v in m.items()}
    if not math.isfinite(m["loss"]):
        raise TrainingError(f"loss is {m['loss']} at step {i + 1} (grad norm {m['grad_norm']}); "
                            "lower optim.lr or set optim.max_grad_norm")
    dt = time.time() - t0
    real = int((batch["segment_ids"] > 0).sum())
    return state, {**m, "lr": float(run.schedule(update)), "sft/pad_frac": 1.0 - real / batch["input_ids"].size,
                   "sft/row_tokens": float(batch["input_ids"].shape[1]), "time/step_s": dt,
                   "throughput/tokens_per_s": real / dt, "time/elapsed_s": time.time() - run.t_start}


def dry_run_sft(cfg: RunConfig, console=print) -> dict:
    """The SFT dry run (``tina_jax.dry_run.dry_run_sft``)."""
    from tina_jax.dry_run import dry_run_sft as _dry_run_sft

    return _dry_run_sft(cfg, console)
