"""Records -> tokenized prompt examples -> a checkpointable grain batch order.

Three steps:

1. ``load_records(source, split)``: a local JSONL/JSON/Parquet/CSV file, a Hugging Face hub id, or a
   built-in ``synthetic:<task>`` source.
2. ``prepare_examples(records, tokenizer, recipe, ...)``: render every prompt with the tokenizer's chat
   template and keep the gold fields the rewards need. Records without a required field or with a too
   long prompt are counted in a report (and logged), never dropped silently.
3. ``make_loader(examples, batch_size, seed, ...)``: a grain ``MapDataset`` pipeline
   (shuffle -> shard slice -> batch -> repeat) whose iterator state is a small JSON-serialisable dict.

Masks are never derived from token ids here (SmolLM2's pad id == its end-of-turn id, which occurs in
every chat prompt): examples carry ``prompt_ids`` of their true length and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain

from tina_jax.data import prompts as prompts_lib
from tina_jax.data import tasks as tasks_lib

__all__ = [
    "load_records",
    "prepare_examples",
    "make_loader",
    "BatchLoader",
    "loader_state",
    "restore_loader",
]

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_EVAL_SPLITS = ("eval", "test", "validation", "valid", "dev")


# --------------------------------------------------------------------------------------------------
# 1. loading


def load_records(source: str, split: str | None = None, **kw) -> "list[dict] | Any":
    """Load raw records.

    Args:
      source: one of
        - ``"synthetic:<task>"`` (``add``, ``sub``, ``mul``, see ``tasks.py``; or K&K puzzles ``kk3``,
          ``kk2-3``, ``kk2-3:compact``, ``kk3-7:no_think`` with reasoning traces, see
          ``kk.parse_source``). Keyword arguments:
          ``n`` (records of this split, required), ``seed`` (default 0), and for a train split
          ``n_eval`` / for an eval split ``n_train`` (default 0): the size of the other split, checked
          to fit in the pool. Train (``split`` None or "train") and eval (``split`` in
          eval/test/validation/valid/dev) drawn with one seed never share a problem.
        - a path to a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file (format from the
          extension), read with ``datasets.load_dataset(<format>, data_files=...)``.
        - otherwise a Hugging Face hub id, read with ``datasets.load_dataset(source, name=kw["name"],
          split=split or "train")`` (needs network access; other keywords are passed through).
      split: split name (see above).

    Returns:
      A list of dicts (synthetic) or a ``datasets.Dataset`` (iterating it yields dicts).
    """
    if source.startswith("synthetic:"):
        task = source.split(":", 1)[1]
        unknown = set(kw) - {"n", "seed", "n_eval", "n_train"}
        if unknown:
            raise ValueError(f"load_records({source!r}): unknown keyword(s) {sorted(unknown)}")
        if "n" not in kw:
            raise ValueError(f"load_records({source!r}) needs n=<number of records>")
        seed = kw.get("seed", 0)
        if task.startswith("kk"):  # Knights & Knaves puzzles with reasoning traces (tina_jax.data.kk)
            from tina_jax.data import kk

            splits = kk.synthetic_splits
        else:
            splits = tasks_lib.synthetic_splits
        if split is None or split == "train":
            return splits(task, kw["n"], kw.get("n_eval", 0), seed)[0]
        if split in _EVAL_SPLITS:
            return splits(task, kw.get("n_train", 0), kw["n"], seed)[1]
        raise ValueError(f"synthetic sources have splits 'train' and {_EVAL_SPLITS}; got {split!r}")

    import datasets  # heavy import, only when needed

    ext = os.path.splitext(source)[1].lower()
    if os.path.exists(source):
        if os.path.isdir(source) or ext not in _FILE_BUILDERS:
            raise ValueError(
                f"local data source {source!r}: expected a file ending in one of {sorted(_FILE_BUILDERS)}"
            )
        if ext == ".jsonl":
            _check_jsonl(source)
        name = split or "train"
        try:
            ds = datasets.load_dataset(_FILE_BUILDERS[ext], data_files={name: source}, split=name, **kw)
        except Exception as e:  # datasets/pyarrow errors name neither the file nor the line
            raise ValueError(f"{source}: could not be read as {_FILE_BUILDERS[ext]} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if len(ds) == 0:
            raise ValueError(f"{source} has no records")
        return ds
    if ext in _FILE_BUILDERS:
        raise FileNotFoundError(f"data file {source!r} does not exist")
    return datasets.load_dataset(source, name=kw.pop("name", None), split=split or "train", **kw)


def read_jsonl(path: str | os.PathLike):
    """``(line number, record)`` for each non-blank line of a JSONL file; a line that is not a JSON object
    raises ``ValueError("FILE:LINE: ...")`` (the one JSONL reader of the project: data files and benchmarks)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _check_jsonl(path: str) -> None:
    """``FILE:LINE: not valid JSON`` / ``FILE has no records`` before datasets reads it (its errors name
    neither)."""
    if sum(1 for _ in read_jsonl(path)) == 0:  # reads every line: a bad line anywhere is named
        raise ValueError(f"{path} has no records")


# --------------------------------------------------------------------------------------------------
# 2. prompts


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def prepare_examples(
    records: Iterable[Mapping[str, Any]],
    tokenizer,
    recipe: str | prompts_lib.PromptRecipe,
    field_map: Mapping[str, str] | None = None,
    required_fields: Sequence[str] = ("solution",),
    max_prompt_length: int = 512,
    overlong: str = "skip",
    keep_fields: Sequence[str] = (),
) -> tuple[list[dict], dict]:
    """Tokenize prompts and keep the gold fields.

    Args:
      records: dict-like records (a list or a ``datasets.Dataset``).
      tokenizer: a transformers tokenizer (chat template used when present).
      recipe: prompt recipe name or object (``prompts.RECIPES``).
      field_map: canonical field name -> record column (e.g. ``{"problem": "question",
        "solution": "answer"}``). Unmapped names are read as themselves.
      required_fields: canonical names of the gold fields the rewards need; records lacking one (key
        absent, None or a blank string) are skipped and counted. The recipe's prompt field is always
        required.
      max_prompt_length: longest allowed prompt in tokens.
      overlong: ``"skip"`` drops longer prompts, ``"truncate_left"`` keeps their last
        ``max_prompt_length`` tokens; either way they are counted.
      keep_fields: canonical names of extra fields copied when present (never required).

    Returns:
      ``(examples, report)``. Each example is a dict with ``prompt_ids`` (list[int], true length,
      no padding), ``prompt_text`` (the full rendered prompt, before any truncation),
      ``num_truncated_tokens`` (int), ``assistant_prefix`` (str or None: text the prompt ends with
      that belongs to the completion, e.g. "<think>"), ``index`` (position in ``records``), and
      the required and kept fields under their canonical names.
      ``report = {"total", "kept", "missing_field": {field: count}, "overlong", "truncated",
      "examples_of_problems": [first <= 10 record indices that were skipped or truncated]}``.

    Raises:
      ValueError: on a bad ``overlong``/``max_prompt_length``, or when no record survives (the message
        says why and how to fix it).
    """
    if overlong not in ("skip", "truncate_left"):
        raise ValueError(f"overlong must be 'skip' or 'truncate_left', got {overlong!r}")
    if not isinstance(max_prompt_length, int) or max_prompt_length <= 0:
        raise ValueError(f"max_prompt_length must be a positive int, got {max_prompt_length!r}")
    r = prompts_lib.get_recipe(recipe)
    field_map = dict(field_map or {})
    col = lambda name: field_map.get(name, name)  # noqa: E731
    required = [r.field] + [f for f in required_fields if f != r.field]

    report: dict[str, Any] = {
        "total": 0,
        "kept": 0,
        "missing_field": {},
        "overlong": 0,
        "truncated": 0,
        "examples_of_problems": [],
    }
    problems = report["examples_of_problems"]

    def note_problem(i: int):
        if len(problems) < 10:
            problems.append(i)

    # Pass 1: field checks; keep (index, record) of the complete ones.
    complete: list[tuple[int, Mapping[str, Any]]] = []
    for i, rec in enumerate(records):
        report["total"] += 1
        missing = [f for f in required if _is_missing(rec.get(col(f)))]
        for f in missing:
            report["missing_field"][f] = report["missing_field"].get(f, 0) + 1
        if missing:
            note_problem(i)
        else:
            complete.append((i, rec))

    # Pass 2: render in chunks (batched apply_chat_template), length checks.
    examples: list[dict] = []
    chunk = 256
    for start in range(0, len(complete), chunk):
        part = complete[start : start + chunk]
        convs = [prompts_lib.build_messages(rec, r, field_map) for _, rec in part]
        ids_list, texts = prompts_lib.render_prompts(tokenizer, convs, r.chat_template)
        for (i, rec), ids, text in zip(part, ids_list, texts):
            cut = 0
            if len(ids) > max_prompt_length:
                report["overlong"] += 1
                note_problem(i)
                if overlong == "skip":
                    continue
                cut = len(ids) - max_prompt_length
                ids = ids[cut:]
                report["truncated"] += 1
            ex = {
                "prompt_ids": ids,
                "prompt_text": text,
                "num_truncated_tokens": cut,
                "assistant_prefix": r.assistant_prefix,
                "index": i,
            }
            for f in required:
                ex[f] = rec[col(f)]
                if f == "solution" and isinstance(ex[f], (int, float)) and not isinstance(ex[f], bool):
                    # a bare number as gold: every checker parses "\boxed{42}" (a plain 42 is not LaTeX)
                    ex[f] = f"\\boxed{{{ex[f]}}}"
                    report["numeric_solution_converted"] = report.get("numeric_solution_converted", 0) + 1
            for f in keep_fields:
                if f not in ex and rec.get(col(f)) is not None:
                    ex[f] = rec[col(f)]
            examples.append(ex)
    report["kept"] = len(examples)

    n = report["total"]
    if n == 0:
        raise ValueError("prepare_examples: no records to prepare (the data source is empty)")
    if not examples:
        reasons = []
        for f, c in report["missing_field"].items():
            reasons.append(f"{c} of {n} records lack field {f!r} (read from column {col(f)!r})")
        if report["overlong"]:
            reasons.append(
                f"{report['overlong']} of {n} prompts are longer than max_prompt_length={max_prompt_length} tokens"
            )
        hint = []
        if report["missing_field"]:
            hint.append("set data.field_map to map your column names")
        if report["overlong"]:
            hint.append("raise max_prompt_length or use overlong='truncate_left'")
        raise ValueError(f"all {n} records were dropped: " + "; ".join(reasons) + "; " + " or ".join(hint))
    skipped = n - len(examples)
    if skipped or report["truncated"]:
        logger.warning(
            "prepare_examples: kept %d of %d records (missing fields: %s; overlong prompts: %d, %s); "
            "first affected record indices: %s",
            len(examples),
            n,
            report["missing_field"] or "none",
            report["overlong"],
            f"{report['truncated']} left-truncated" if overlong == "truncate_left" else "skipped",
            problems,
        )
    return examples, report


# --------------------------------------------------------------------------------------------------
# 3. batch order


def _to_json(obj: Any) -> Any:
    """grain state -> JSON-serialisable (bytes become {"__bytes_b64__": ...})."""
    if isinstance(obj, bytes):
        return {"__bytes_b64__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return obj.item()
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        if set(obj) == {"__bytes_b64__"}:
            return base64.b64decode(obj["__bytes_b64__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _fingerprint_examples(examples: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.get("prompt_ids", ex.get("prompt_text")), separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


class BatchLoader:
    """Iterator over batches (``list[dict]`` of ``batch_size`` examples) with checkpointable state.

    Order: grain ``MapDataset.source(examples).seed(seed).shuffle()`` (a fresh permutation per
    epoch), then shard ``[shard_index:usable:shard_count]`` of each epoch's permutation, then
    ``batch(batch_size, drop_remainder=True)`` per epoch, then ``repeat(num_epochs)``. Every shard
    gets the same number of batches; within an epoch the shards are disjoint. Read with
    ``ReadOptions(num_threads=0)``: the data is in memory, so no reader threads.

    Attributes:
      batches_per_epoch: batches each shard yields per epoch.
      report: {"examples", "per_shard", "batches_per_epoch", "dropped_per_epoch_per_shard",
        "dropped_for_sharding"} (examples not served in an epoch: the shuffled tail, different
        every epoch).
    """

    STATE_VERSION = 1

    def __init__(
        self,
        examples: Sequence[Mapping[str, Any]],
        batch_size: int,
        seed: int,
        num_epochs: int | None,
        shard_index: int = 0,
        shard_count: int = 1,
        shuffle: bool = True,
    ):
        n = len(examples)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shard_count <= 0 or not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive or None (endless), got {num_epochs}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        per_shard = n // shard_count
        nb = per_shard // batch_size
        if nb == 0:
            raise ValueError(
                f"{n} examples over {shard_count} shard(s) give {per_shard} per shard, fewer than "
                f"batch_size={batch_size}: no complete batch; lower batch_size or add data"
            )
        self.batches_per_epoch = nb
        self.report = {
            "examples": n,
            "per_shard": per_shard,
            "batches_per_epoch": nb,
            "dropped_per_epoch_per_shard": per_shard - nb * batch_size,
            "dropped_for_sharding": n - per_shard * shard_count,
        }
        if self.report["dropped_per_epoch_per_shard"] or self.report["dropped_for_sharding"]:
            logger.info(
                "data loader: each epoch serves %d of %d examples per shard in %d batches of %d; "
                "%d examples per epoch are left out (a different random tail each epoch when shuffled)",
                nb * batch_size,
                per_shard,
                nb,
                batch_size,
                n - nb * batch_size * shard_count,
            )
        self._fingerprint = {
            "num_examples": n,
            "examples_sha256": _fingerprint_examples(examples),
            "batch_size": batch_size,
            "seed": int(seed),
            "num_epochs": num_epochs,
            "shard_index": shard_index,
            "shard_count": shard_count,
            "shuffle": bool(shuffle),
        }
        ds = grain.MapDataset.source(list(examples))
        if shuffle:
            ds = ds.seed(int(seed)).shuffle()
        ds = ds[shard_index : per_shard * shard_count : shard_count]
        # batch_fn: a list of shallow copies; the default would try to stack ragged lists.
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=lambda xs: [dict(x) for x in xs])
        ds = ds.repeat(num_epochs)
        self._dataset = ds
        self._it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> list[dict]:
        return next(self._it)

    def get_state(self) -> dict:
        """JSON-serialisable position: ``{"version", "grain", "fingerprint"}``."""
        return {
            "version": self.STATE_VERSION,
            "grain": _to_json(self._it.get_state()),
            "fingerprint": dict(self._fingerprint),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume at a position from ``get_state`` (possibly after a JSON round trip).

        Raises:
          ValueError: if the state was made for other examples or another loader configuration.
        """
        if not isinstance(state, Mapping) or state.get("version") != self.STATE_VERSION:
            raise ValueError(f"not a BatchLoader state (version {self.STATE_VERSION}): {state!r:.200}")
        saved = dict(state["fingerprint"])
        diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "data loader state does not match this loader (saved, current): "
                + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
                + "; resume with the same data, prompt settings and loader configuration"
            )
        self._it.set_state(_from_json(state["grain"]))


def make_loader(
    examples: Sequence[Mapping[str, Any]],
    batch_size: int,
    seed: int,
    num_epochs: int | None,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
) -> BatchLoader:
    """A ``BatchLoader`` over ``examples`` (see its docstring).

    Args:
      examples: from ``prepare_examples``.
      batch_size: examples per batch on this shard (per host).
      seed: shuffle seed in [0, 2**32); all shards must use the same one.
      num_epochs: passes over the data, or None for endless.
      shard_index, shard_count: this host's shard (``jax.process_index()``, ``jax.process_count()``).
      shuffle: False keeps the given order.
    """
    return BatchLoader(examples, batch_size, seed, num_epochs, shard_index, shard_count, shuffle)


def loader_state(it: BatchLoader) -> dict:
    """The JSON-serialisable state of a loader (``it.get_state()``)."""
    return it.get_state()


def restore_loader(
    examples: Sequence[Mapping[str, Any]],
    batch_size: int,
    seed: int,
    num_epochs: int | None,
    state: Mapping[str, Any],
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
) -> BatchLoader:
    """A fresh loader positioned where ``state`` was taken; same arguments as ``make_loader``."""
    it = make_loader(examples, batch_size, seed, num_epochs, shard_index, shard_count, shuffle)
    it.set_state(state)
    return it
