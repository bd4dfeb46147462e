"""How the library's config dataclasses report a bad value: ``FieldError`` names the field.

``SamplingConfig``, ``LossConfig``, ``GrpoConfig`` and ``AdapterConfig`` validate their own values in
``__post_init__`` (each value once, where it is defined) and raise ``FieldError(field, message)``. The run
config (``tina_jax.config``) composes these dataclasses and turns the error into a one-line ``ConfigError``
naming the YAML key (``rollout.top_p: must be in (0, 1] ...``); library users see the whole sentence
(``top_p must be in (0, 1] ...``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["FieldError", "is_int", "is_real"]


class FieldError(ValueError):
    """The value of one config field is invalid. ``field``: its name; the message: a whole sentence."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    @property
    def detail(self) -> str:
        """The message without a leading field name (for "section.field: detail")."""
        msg = str(self)
        return msg[len(self.field):].lstrip() if msg.startswith(self.field + " ") else msg


def is_int(x) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x, finite: bool = True) -> bool:
    """A real number, not a bool (and finite unless ``finite=False``)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and (not finite or math.isfinite(x))
