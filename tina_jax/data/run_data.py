"""The run config's data policy: which records a run reads, how its prompts are rendered, in which order
batches come, and how many steps the data allows.

    train_ex, eval_ex, report = build_data(cfg, tokenizer)     # GRPO: prompts (train and held-out)
    train_ex, report = build_sft_data(cfg, tokenizer)          # SFT: prompt + target sequences
    loader = build_loader(cfg, train_ex)                       # grain, one batch = one step
    data_step_limit(cfg, loader)                               # steps the data allows (None: endless)

Synthetic sources (``synthetic:<task>``) draw the train and eval splits disjointly with ``data.seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_split", "prompt_options", "build_data", "build_eval_data", "build_sft_data", "build_loader",
           "data_step_limit", "remote_source", "batch_size"]


def load_split(cfg, source: str, split: str | None, n: int | None):
    """Raw records of one split (synthetic sources draw train and eval disjointly with data.seed)."""
    from tina_jax.data import pipeline

    d = cfg.data
    kw: dict[str, Any] = {}
    if source.startswith("synthetic:"):
        kw = {"n": n, "seed": d.seed}
        if split in (None, "train"):
            kw["n_eval"] = d.n_eval if d.eval == source else 0
        else:
            kw["n_train"] = d.n_train or 0
    records = pipeline.load_records(source, split, **kw)
    if n is not None and not source.startswith("synthetic:"):
        records = records.select(range(min(n, len(records)))) if hasattr(records, "select") else records[:n]
    return records


def _n_train(cfg) -> int | None:
    d = cfg.data
    return d.n_train if d.n_train is not None else (5000 if d.train.startswith("synthetic:") else None)


def prompt_options(cfg) -> dict:
    """``prepare_examples`` keyword arguments from the data section (recipe, fields, length policy)."""
    d = cfg.data
    return dict(recipe=d.prompt_recipe, field_map=d.field_map or None, required_fields=d.required_fields,
                max_prompt_length=d.max_prompt_length, overlong=d.overlong, keep_fields=d.keep_fields)


def build_eval_data(cfg, tokenizer) -> tuple[list, dict | None]:
    """(held-out examples of data.eval, report), prompts rendered as for training rollouts."""
    from tina_jax.data import pipeline

    d = cfg.data
    if not d.eval:
        return [], None
    eval_ex, eval_rep = pipeline.prepare_examples(load_split(cfg, d.eval, d.eval_split, d.n_eval), tokenizer,
                                                  **prompt_options(cfg))
    return eval_ex[:d.n_eval], eval_rep


def build_data(cfg, tokenizer) -> tuple[list, list, dict]:
    """(train examples, eval examples, report) with prompts rendered by the tokenizer's chat template."""
    from tina_jax.data import pipeline

    d = cfg.data
    train_ex, train_rep = pipeline.prepare_examples(load_split(cfg, d.train, d.train_split, _n_train(cfg)),
                                                    tokenizer, **prompt_options(cfg))
    eval_ex, eval_rep = build_eval_data(cfg, tokenizer)
    return train_ex, eval_ex, {"train": train_rep, "eval": eval_rep}


def build_sft_data(cfg, tokenizer) -> tuple[list[dict], dict]:
    """(tokenized SFT examples of data.train, report) (``tina_jax.data.sft``)."""
    from tina_jax.data.sft import prepare_sft_examples

    d, s = cfg.data, cfg.sft
    return prepare_sft_examples(load_split(cfg, d.train, d.train_split, _n_train(cfg)), tokenizer, d.prompt_recipe,
                                d.field_map or None, s.completion_field, s.max_length, s.overlong)


def batch_size(cfg) -> int:
    """Examples per step: prompts per rollout (GRPO) or sequences per update (SFT)."""
    return cfg.sft.batch_size if cfg.algorithm == "sft" else cfg.grpo.prompts_per_step


def build_loader(cfg, train_ex: list):
    """The grain batch loader over the training examples (one batch = one step's prompts or sequences)."""
    from tina_jax.data import pipeline

    # Every process walks the same global order and holds the whole (small) batch; each scores (GRPO) or
    # places (SFT) its own part of it (tina_jax.distributed), so N processes train exactly as one does.
    return pipeline.make_loader(train_ex, batch_size=batch_size(cfg), seed=cfg.data.seed,
                                num_epochs=cfg.data.num_epochs, shuffle=cfg.data.shuffle)


def data_step_limit(cfg, loader) -> int | None:
    """Steps the data allows (batches per epoch x data.num_epochs), None when endless."""
    if cfg.data.num_epochs is None:
        return None
    return loader.batches_per_epoch * cfg.data.num_epochs


def remote_source(source: str) -> bool:
    """True for a hub dataset id (skipped offline by the dry run); False for synthetic tasks and anything that
    names a local file (an existing path, a data-file suffix, or an absolute/relative path)."""
    if source.startswith("synthetic:") or Path(source).exists():
        return False
    if Path(source).suffix in (".jsonl", ".json", ".parquet", ".csv", ".arrow"):
        return False
    return not source.startswith(("/", "./", "../", "~"))
