"""Supervised (prompt, completion) examples rendered with the chat template, for ``sft_step``.

A record gives its target in one of three layouts (first match wins):

1. ``messages``: a chat (list of ``{"role", "content"}``); the last assistant turn is the target and
   everything before it the prompt.
2. ``prompt`` + ``completion``: the prompt is a string (one user turn) or a list of messages; the
   completion a string or a one-message assistant list (TRL's prompt-completion layouts).
3. the prompt recipe's field (``data.prompt_recipe``, e.g. ``kk`` reads ``quiz``) + ``completion``:
   the same prompts the RL stage sees.

Rendering: ``prompt_ids = template(prompt, add_generation_prompt=True)`` and ``full_ids = template(prompt +
[assistant: completion])``; the loss covers ``full_ids[len(prompt_ids):]`` (the completion and the
template's end-of-turn tokens, so the model learns to stop). When the prompt's tokens are not a prefix
of the full tokens although its text is a prefix of the full text (a merge across the boundary, e.g. a
raw-text prompt ending in spaces, recipe ``warmup_kk``), the full text is tokenized once and the loss
covers every token that holds completion characters (by the fast tokenizer's offsets), as TRL's
completion-only collator trained on everything after the prompt in one tokenization. Otherwise a
template whose full rendering does not extend the prompt's rendering is an error (no silent
misalignment). Records without a target, and
sequences longer than ``max_length`` (``overlong="skip"``, or cut to ``max_length`` with
``"truncate"``), are counted in the report.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tina_jax.data import prompts as prompts_lib

logger = logging.getLogger(__name__)

__all__ = ["split_record", "prepare_sft_examples"]


def _is_messages(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in x)


def split_record(rec: Mapping[str, Any], recipe: str | prompts_lib.PromptRecipe = "plain",
                 field_map: Mapping[str, str] | None = None,
                 completion_field: str = "completion") -> tuple[list[dict], str] | None:
    """``(prompt messages, target text)`` of a record, or None when it has no usable target."""
    fm = dict(field_map or {})
    msgs = rec.get(fm.get("messages", "messages"))
    if msgs is not None:
        if not _is_messages(msgs):
            return None
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None or not isinstance(msgs[last]["content"], str) or not msgs[last]["content"]:
            return None
        return [dict(role=m["role"], content=m["content"]) for m in msgs[:last]], msgs[last]["content"]
    completion = rec.get(fm.get(completion_field, completion_field))
    if _is_messages(completion) and len(completion) == 1 and completion[0]["role"] == "assistant":
        completion = completion[0]["content"]
    if not isinstance(completion, str) or not completion:
        return None
    prompt = rec.get(fm.get("prompt", "prompt"))
    if isinstance(prompt, str) and prompt:
        return [{"role": "user", "content": prompt}], completion
    if _is_messages(prompt) and prompt:
        return [dict(role=m["role"], content=m["content"]) for m in prompt], completion
    try:
        messages = prompts_lib.build_messages(rec, recipe, fm)
    except ValueError:
        return None
    r = prompts_lib.get_recipe(recipe)
    if r.assistant_prefix is not None:  # the pre-filled assistant text belongs to the completion
        messages = messages[:-1]
        completion = r.assistant_prefix + completion
    return messages, completion


def _render(tokenizer, messages: list[dict], generation_prompt: bool, chat_template: str | None) -> list[int]:
    if not prompts_lib.has_chat_template(tokenizer) and chat_template is None:
        text = "\n\n".join(m["content"] for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not generation_prompt and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return ids
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                        chat_template=chat_template)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [int(t) for t in out]


def _split_by_text(tokenizer, messages: list[dict], completion: str, chat_template: str | None,
                   ) -> tuple[list[int], list[int]] | None:
    """``(full_ids, loss_mask)`` from one tokenization of the full text, the mask set on tokens that end
    past the prompt text; None when the prompt text is not a prefix of the full text, or the tokenizer
    gives no offsets (a slow tokenizer) or no template is used."""
    if chat_template is None and not prompts_lib.has_chat_template(tokenizer):
        return None
    if not getattr(tokenizer, "is_fast", False):
        return None
    p_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           chat_template=chat_template)
    f_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                           tokenize=False, add_generation_prompt=False, chat_template=chat_template)
    if not f_text.startswith(p_text) or len(f_text) == len(p_text):
        return None
    enc = tokenizer(f_text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(t) for t in enc["input_ids"]]
    mask = [int(end > len(p_text)) for _, end in enc["offset_mapping"]]
    if not any(mask):
        return None
    return ids, mask


def prepare_sft_examples(records: Iterable[Mapping[str, Any]], tokenizer,
                         recipe: str | prompts_lib.PromptRecipe = "plain",
                         field_map: Mapping[str, str] | None = None, completion_field: str = "completion",
                         max_length: int = 1024, overlong: str = "skip") -> tuple[list[dict], dict]:
    """Tokenized SFT examples ``{"input_ids": list[int], "loss_mask": list[int], "index": int}`` and a
    report ``{"total", "kept", "no_target", "overlong", "truncated", "prompt_only_after_truncation",
    "examples_of_problems", "tokens": {"median", "max"}}``."""
    if overlong not in ("skip", "truncate"):
        raise ValueError(f"overlong must be 'skip' or 'truncate', got {overlong!r}")
    r = prompts_lib.get_recipe(recipe)
    report: dict[str, Any] = {"total": 0, "kept": 0, "no_target": 0, "overlong": 0, "truncated": 0,
                              "prompt_only_after_truncation": 0, "examples_of_problems": []}
    examples: list[dict] = []
    lengths: list[int] = []

    def problem(i):
        if len(report["examples_of_problems"]) < 10:
            report["examples_of_problems"].append(i)

    for i, rec in enumerate(records):
        report["total"] += 1
        split = split_record(rec, r, field_map, completion_field)
        if split is None:
            report["no_target"] += 1
            problem(i)
            continue
        messages, completion = split
        p_ids = _render(tokenizer, messages, True, r.chat_template)
        full = _render(tokenizer, messages + [{"role": "assistant", "content": completion}], False, r.chat_template)
        if full[:len(p_ids)] == p_ids and len(full) > len(p_ids):
            mask = [0] * len(p_ids) + [1] * (len(full) - len(p_ids))
        else:
            split = _split_by_text(tokenizer, messages, completion, r.chat_template)
            if split is None:
                raise ValueError(
                    f"record {i}: the chat template's rendering of prompt + completion does not start with its "
                    "rendering of the prompt alone, so the completion tokens cannot be located; use a template "
                    "whose assistant turn appends to the generation prompt (or data with prompt/completion text)")
            full, mask = split
        if len(full) > max_length:
            report["overlong"] += 1
            problem(i)
            if overlong == "skip":
                continue
            full, mask = full[:max_length], mask[:max_length]
            report["truncated"] += 1
            if not any(mask):
                report["prompt_only_after_truncation"] += 1
                continue
        examples.append({"input_ids": full, "loss_mask": mask, "index": i})
        lengths.append(len(full))
    report["kept"] = len(examples)
    if report["total"] == 0:
        raise ValueError("prepare_sft_examples: the data source is empty")
    if not examples:
        raise ValueError(
            f"all {report['total']} SFT records were dropped: {report['no_target']} have no target (need "
            f"'messages' with an assistant turn, or a '{completion_field}' field with 'prompt' or the recipe's "
            f"field {r.field!r}; map columns with data.field_map), {report['overlong']} are longer than "
            f"sft.max_length={max_length} tokens")
    lengths.sort()
    report["tokens"] = {"median": lengths[len(lengths) // 2], "max": lengths[-1]}
    if report["kept"] < report["total"] or report["truncated"]:
        logger.warning("SFT data: kept %d of %d records (%d without a target, %d overlong: %s); first affected "
                       "record indices: %s", report["kept"], report["total"], report["no_target"],
                       report["overlong"], "truncated" if overlong == "truncate" else "skipped",
                       report["examples_of_problems"])
    return examples, report
