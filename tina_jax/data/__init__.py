"""Data side of training: synthetic tasks, prompt recipes, loading, tokenizing and batch order."""

from tina_jax.data.pipeline import (
    BatchLoader,
    load_records,
    loader_state,
    make_loader,
    prepare_examples,
    restore_loader,
)
from tina_jax.data.prompts import RECIPES, PromptRecipe, build_messages, get_recipe, render_prompt, render_prompts
from tina_jax.data.tasks import TASKS, synthetic_dataset, synthetic_splits

__all__ = [
    "BatchLoader",
    "load_records",
    "loader_state",
    "make_loader",
    "prepare_examples",
    "restore_loader",
    "RECIPES",
    "PromptRecipe",
    "build_messages",
    "get_recipe",
    "render_prompt",
    "render_prompts",
    "TASKS",
    "synthetic_dataset",
    "synthetic_splits",
]
