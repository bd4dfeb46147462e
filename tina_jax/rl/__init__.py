"""Model-independent GRPO math: group advantages and per-token policy losses.

``advantages``: ``compute_advantages``, ``zero_advantage_group_fraction``.
``losses``: ``LossConfig``, ``per_token_loss``, ``aggregate``, ``policy_loss``,
``finalize_loss``, ``finalize_metrics``, ``kl_per_token``, ``chunked_logprobs``.
Losses return a (sum, denominator) pair so that row-wise micro-batching is exact; see
``tina_jax.rl.losses``.
"""

from tina_jax.rl.advantages import (
    ADVANTAGE_MODES,
    compute_advantages,
    group_std_mean,
    zero_advantage_group_fraction,
)
from tina_jax.rl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LossConfig,
    aggregate,
    chunked_logprobs,
    finalize_loss,
    finalize_metrics,
    kl_per_token,
    per_token_loss,
    policy_loss,
)

__all__ = [
    "ADVANTAGE_MODES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "LossConfig",
    "aggregate",
    "chunked_logprobs",
    "compute_advantages",
    "finalize_loss",
    "finalize_metrics",
    "kl_per_token",
    "per_token_loss",
    "policy_loss",
    "group_std_mean",
    "zero_advantage_group_fraction",
]
