"""Named prompt recipes and chat-template rendering.

A recipe says which record field holds the question, what system prompt (if any) to use and how to
wrap the question in the user message. Rendering always goes through ``tokenizer.apply_chat_template``
with the tokenizer's own chat template, or the recipe's where the reference installed its own (Tina).

Placeholders: the user template contains ``{<field>}`` (e.g. ``{problem}``), which is replaced by
the record's value with ``str.replace``; no ``str.format`` is applied, so templates and system
prompts may contain literal braces (``\\boxed{}``, Open-RS's literal ``\\boxed{{}}``).

Sources of the texts: the project's shared RECIPES.md, sections 4 (open_rs), 6 (tinylora_gsm8k),
8 (lighteval_math, qwen_boxed) and the Logic-RL K&K parquet files (kk).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PromptRecipe",
    "RECIPES",
    "get_recipe",
    "build_messages",
    "render_prompt",
    "render_prompts",
    "has_chat_template",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptRecipe:
    """How to turn one record into chat messages.

    Attributes:
      name: registry key.
      system: system message content, or None for no system message (the tokenizer's template may
        still insert its own default system prompt, as SmolLM2's does).
      user_template: user message with a ``{<field>}`` placeholder.
      field: canonical name of the record field that fills the placeholder.
      assistant_prefix: text that starts the assistant turn (e.g. ``"<think>"``), rendered with
        ``continue_final_message=True``; None to open an empty assistant turn.
      chat_template: a Jinja chat template that replaces the tokenizer's own for this recipe (as Tina's
        code installed its own), or None for the tokenizer's template.
    """

    name: str
    system: str | None
    user_template: str
    field: str
    assistant_prefix: str | None = None
    chat_template: str | None = None

    def __post_init__(self):
        if "{" + self.field + "}" not in self.user_template:
            raise ValueError(
                f"prompt recipe {self.name!r}: user_template must contain the placeholder "
                f"{{{self.field}}}; got {self.user_template!r}"
            )


OPEN_RS_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer, and put your final answer within \\boxed{{}} . The reasoning process and answer are "
    "enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. Note that respond by English, NOT use other "
    "languages."
)

# Tina's system prompt for the open-rs data [shangshang-wang/Tina tina/utils/prompt.py OPEN_RS_SYSTEM_PROMPT,
# selected in tina/post_train_hf/grpo.py when the dataset name contains "open-rs"/"open_rs"]: Open-RS's text
# cut into five lines, with a leading and a trailing newline and a space before the fourth line break.
TINA_OPEN_RS_SYSTEM = (
    "\nA conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer, and put your final answer within \\boxed{{}} .\n"
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, \ni.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "Note that respond by English, NOT use other languages.\n"
)

# The chat rendering Tina's code installs on the DeepSeek-R1-Distill tokenizer
# (tokenizer.chat_template = REASON_CHAT_TEMPLATE in tina/post_train_hf/grpo.py): the R1 layout
# ``{bos}{last system message}<｜User｜>{user}<｜Assistant｜>`` *without* the ``<think>\n`` that the
# tokenizer's own template appends to the generation prompt. Written here for system/user/assistant
# messages (no tool calls), which is all a training prompt holds.
R1_NO_THINK_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}{{- ns.system -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- '<｜User｜>' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)

LIGHTEVAL_MATH_USER = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be "
    "of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem. "
    "Think step by step before answering.\n\n{problem}"
)

# Logic-RL's system text, verbatim from the `prompt` field of its K&K parquet files (double space
# and the missing space in "and<answer>" included).
KK_SYSTEM = (
    "You are a helpful assistant. The assistant first thinks about the reasoning process in the mind and "
    "then provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and<answer> </answer> tags, respectively, i.e., <think> reasoning process here "
    "</think><answer> answer here </answer>.  Now the user asks you to solve a logical reasoning problem. "
    "After thinking, when you finally reach a conclusion, clearly state the identity of each character "
    "within <answer> </answer> tags. i.e., <answer> (1) Zoey is a knight\n(2) ... </answer>."
)

# "Warm up before you train" prompts, verbatim [safal312/warmup-before-you-train train/dataset_loader.py
# load_math SYSTEM and load_kk SYSTEM_PROMPT, after str.format]: plain text for a base model (TRL applies no
# chat template to string prompts), the assistant's "<think>" pre-filled.
WARMUP_MATH_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in mind and then provides the user with the answer. The "
    "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> final answer inside \\boxed{} tag "
    "</answer>. User: You must put your answer inside <answer> </answer> tags, i.e., <answer> answer here "
    "</answer>. And your final answer will be extracted automatically by the \\boxed{} tag.\n    {problem}\n"
    "    Assistant: <think>"
)
WARMUP_KK_PROMPT = (
    "\n    A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "    The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer.\n    The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively.\n    i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "    User: Please solve this logical reasoning problem. After thinking, when you finally reach a conclusion, "
    "clearly state the identity of each character within <answer> </answer> tags i.e., <answer> (1) Zoey is a "
    "knight\n(2) ... </answer>. Here is my question,\n    \n    {quiz}\n    Assistant: <think>\n    "
)
# Renders the messages' contents as they are (no roles, no special tokens): a raw-text prompt.
RAW_TEMPLATE = "{%- for message in messages -%}{{- message['content'] -}}{%- endfor -%}"

RECIPES: dict[str, PromptRecipe] = {
    r.name: r
    for r in [
        PromptRecipe("plain", None, "{problem}", "problem"),
        PromptRecipe("open_rs", OPEN_RS_SYSTEM, "{problem}", "problem"),
        # Tina's rendering of the open-rs data: its five-line system prompt and its own chat template.
        PromptRecipe("tina_open_rs", TINA_OPEN_RS_SYSTEM, "{problem}", "problem",
                     chat_template=R1_NO_THINK_TEMPLATE),
        PromptRecipe("lighteval_math", None, LIGHTEVAL_MATH_USER, "problem"),
        PromptRecipe(
            "tinylora_gsm8k",
            None,
            "{question} Let's think step by step and output the final answer after \"####\".",
            "question",
        ),
        # Qwen2.5-Math evaluation/utils.py "qwen-boxed": a newline separates the question and the
        # instruction ("{input}\nPlease reason ...").
        PromptRecipe(
            "qwen_boxed",
            "You are a helpful assistant.",
            "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
            "question",
        ),
        PromptRecipe("kk", KK_SYSTEM, "{quiz}", "quiz"),
        # Byte-for-byte Logic-RL: with a ChatML template this renders exactly the `prompt` string
        # stored in their parquet files, including the pre-filled "<think>" of the assistant turn.
        # Completions then start *after* "<think>": a format reward must account for it.
        PromptRecipe("kk_logic_rl", KK_SYSTEM + "\n", "{quiz}\n", "quiz", assistant_prefix="<think>"),
        PromptRecipe("warmup_math", None, WARMUP_MATH_PROMPT, "problem", chat_template=RAW_TEMPLATE),
        PromptRecipe("warmup_kk", None, WARMUP_KK_PROMPT, "quiz", chat_template=RAW_TEMPLATE),
    ]
}


def get_recipe(recipe: str | PromptRecipe) -> PromptRecipe:
    """Look a recipe up by name (a PromptRecipe passes through)."""
    if isinstance(recipe, PromptRecipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown prompt recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[recipe]


def build_messages(
    record: Mapping[str, Any],
    recipe: str | PromptRecipe,
    field_map: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """Chat messages for one record.

    Args:
      record: a data record (dict-like).
      recipe: recipe name or PromptRecipe.
      field_map: canonical field name -> column name in ``record`` (e.g. ``{"problem": "question"}``
        to use the open_rs recipe on GSM8K); unmapped names are looked up as themselves.

    Returns:
      ``[{"role": "system", ...}?, {"role": "user", ...}, {"role": "assistant", ...}?]``; the
      assistant message is present only when the recipe has an ``assistant_prefix``.
    """
    r = get_recipe(recipe)
    column = (field_map or {}).get(r.field, r.field)
    value = record.get(column) if isinstance(record, Mapping) else None
    if not isinstance(value, str):
        problem = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise ValueError(
            f"prompt recipe {r.name!r} reads field {r.field!r} from column {column!r}, which is {problem}; "
            f"set data.field_map (e.g. {{{r.field!r}: '<your column>'}})"
        )
    messages = []
    if r.system is not None:
        messages.append({"role": "system", "content": r.system})
    messages.append({"role": "user", "content": r.user_template.replace("{" + r.field + "}", value)})
    if r.assistant_prefix is not None:
        messages.append({"role": "assistant", "content": r.assistant_prefix})
    return messages


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_text(messages: Sequence[Mapping[str, str]]) -> str:
    """Fallback rendering for tokenizers without a chat template: contents joined by blank lines."""
    return "\n\n".join(m["content"] for m in messages)


def _as_id_lists(out) -> list[list[int]]:
    # transformers >= 5 returns a BatchEncoding (return_dict defaults to True); 4.x returns ids.
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [[int(t) for t in ids] for ids in out]


_warned_no_template = False


def render_prompts(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
                   chat_template: str | None = None) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of many conversations, each ready for generation.

    Uses ``tokenizer.apply_chat_template`` (batched; with ``chat_template`` instead of the tokenizer's own
    when given, e.g. a recipe's) with ``add_generation_prompt=True``, or with
    ``continue_final_message=True`` when a conversation ends with an assistant message (a prefix the
    model continues). All conversations in one call must agree on that. Tokenizers without a chat
    template fall back to encoding the plain joined text (``_plain_text``) with the tokenizer's
    special tokens; a warning is logged once.

    Returns:
      ``(ids, texts)``: ``ids[i]`` is a list[int] of prompt token ids, ``texts[i]`` the rendered string.
    """
    global _warned_no_template
    conversations = [list(c) for c in conversations]
    if not conversations:
        return [], []
    ends_assistant = {c[-1]["role"] == "assistant" for c in conversations}
    if len(ends_assistant) != 1:
        raise ValueError("render_prompts: either all or none of the conversations may end with an assistant prefix")
    cont = ends_assistant.pop()
    if chat_template is None and not has_chat_template(tokenizer):
        if not _warned_no_template:
            logger.warning(
                "tokenizer %s has no chat template: prompts are plain text (system, user and any assistant "
                "prefix joined by blank lines) encoded with the tokenizer's special tokens",
                type(tokenizer).__name__,
            )
            _warned_no_template = True
        texts = [_plain_text(c) for c in conversations]
        ids = _as_id_lists(tokenizer(texts, add_special_tokens=True)["input_ids"])
        return ids, texts
    kwargs = dict(add_generation_prompt=not cont, continue_final_message=cont)
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    ids = _as_id_lists(tokenizer.apply_chat_template(conversations, tokenize=True, **kwargs))
    texts = list(tokenizer.apply_chat_template(conversations, tokenize=False, **kwargs))
    return ids, texts


def render_prompt(tokenizer, messages: Sequence[Mapping[str, str]], chat_template: str | None = None) -> list[int]:
    """Prompt token ids (list[int]) of one conversation; see ``render_prompts``."""
    return render_prompts(tokenizer, [messages], chat_template)[0][0]
