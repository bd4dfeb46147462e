"""``sft_step``: one pure, jit-able, shardable supervised (cross-entropy) update, beside ``grpo_step``.

    state = init_state(model.config, model.params, tx, rng, adapter=adapter)   # the same TrainState
    step = make_sft_step(SftConfig(micro_batch_size=4), mesh=mesh, state=state)
    state, metrics = step(state, batch)

``batch`` (rows may pack several sequences, ``pack_sequences``):

    input_ids     int32[B, T]  prompt + completion tokens, right-padded
    segment_ids   int32[B, T]  0 = padding, k >= 1 = the k-th sequence of the row (attention and positions
                               stay inside a sequence: ``decoder.hidden_states(segment_ids=...)``)
    loss_mask     int32[B, T]  1 = a completion token whose prediction is trained (prompt tokens are 0)

The loss is the token-mean negative log-likelihood of the completion tokens of the whole batch, computed
as a (sum, denominator) pair so that micro-batching (``micro_batch_size`` rows at a time, gradients of
the sums accumulated and divided once by the total token count) gives exactly the full-batch update.
The lm_head and log-softmax run ``logprob_chunk`` positions at a time (``losses.chunked_logprobs``):
[B, T, vocab] logits never exist.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tina_jax.models import decoder
from tina_jax.models.linear import materialize
from tina_jax.rl import losses as loss_lib
from tina_jax.rl.grpo import TrainState, accumulated_update, jit_step, policy_params
from tina_jax.validation import FieldError, is_int

__all__ = ["SftConfig", "sft_step", "make_sft_step", "sft_loss", "pack_sequences"]

_KEYS = ("input_ids", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class SftConfig:
    micro_batch_size: int | None = None  # rows per gradient-accumulation chunk; None = whole batch
    logprob_chunk: int = 64  # sequence positions per lm_head chunk

    def __post_init__(self):
        mbs = self.micro_batch_size
        if mbs is not None and not (is_int(mbs) and mbs >= 1):
            raise FieldError("micro_batch_size", f"micro_batch_size must be >= 1 or None, got {mbs!r}")
        if not (is_int(self.logprob_chunk) and self.logprob_chunk >= 1):
            raise FieldError("logprob_chunk", f"logprob_chunk must be >= 1, got {self.logprob_chunk!r}")


def _check_batch(batch: dict) -> None:
    for k in _KEYS:
        if k not in batch:
            raise ValueError(f"SFT batch is missing {k!r}; expected {_KEYS} (see tina_jax.rl.sft)")
    shape = batch["input_ids"].shape
    if len(shape) != 2:
        raise ValueError(f"batch['input_ids'] must be [B, T], got shape {shape}")
    for k in _KEYS[1:]:
        if batch[k].shape != shape:
            raise ValueError(f"batch[{k!r}] has shape {batch[k].shape}, input_ids has {shape}")


def sft_loss(cfg, params, input_ids: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array,
             chunk: int = 64) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p over trained tokens, number of trained tokens) for one batch of rows.

    Token t is trained when ``loss_mask[t]`` is set and token t-1 belongs to the same sequence (the first
    token of a sequence has nothing to be predicted from).
    """
    h = decoder.hidden_states(cfg, params, input_ids, segment_ids=segment_ids)[:, :-1]
    targets = input_ids[:, 1:]
    seg = segment_ids
    trained = (loss_mask[:, 1:] != 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    w = materialize(decoder.lm_head(cfg, params))
    logp, _ = loss_lib.chunked_logprobs(h, w.astype(h.dtype), targets, chunk)
    return -jnp.sum(jnp.where(trained, logp, 0.0)), jnp.sum(trained).astype(jnp.float32)


def sft_step(state: TrainState, batch: dict, config: SftConfig = SftConfig()) -> tuple[TrainState, dict]:
    """One supervised optimizer update. Pure: the same (state, batch) always gives the same result."""
    _check_batch(batch)
    cfg = state.model_config
    b = batch["input_ids"].shape[0]
    mbs = config.micro_batch_size or b
    if b % mbs:
        raise ValueError(f"micro_batch_size {mbs} does not divide the batch of {b} rows")
    n_micro = b // mbs

    def split(x):  # micro-batch k = rows k, k + n, ...: the leading axis stays evenly sharded
        return jnp.moveaxis(x.reshape((mbs, n_micro) + x.shape[1:]), 1, 0)

    micro = {k: split(batch[k]) for k in _KEYS}
    rng, dropout_root = jax.random.split(state.rng)

    def micro_loss(trainable, mb, key):
        params = policy_params(state, trainable, dropout_rng=key)
        s, d = sft_loss(cfg, params, mb["input_ids"], mb["segment_ids"], mb["loss_mask"], config.logprob_chunk)
        return s, (d, {"tokens": d})

    trainable, opt_state, grads, loss, sums = accumulated_update(state, micro_loss, micro, n_micro, dropout_root)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "target_tokens": sums["tokens"],
               "sequences": jnp.sum(jnp.max(batch["segment_ids"], axis=1)).astype(jnp.float32)}
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=rng), metrics


def make_sft_step(config: SftConfig, mesh: jax.sharding.Mesh | None = None, state: TrainState | None = None,
                  donate: bool = True):
    """``sft_step`` jitted with ``config`` closed over; with a mesh, sharded as ``make_grpo_step``."""
    return jit_step(lambda s, b: sft_step(s, b, config), config.micro_batch_size, mesh, state, donate)


def pack_sequences(seqs: Sequence[tuple[Sequence[int], Sequence[int]]], rows: int, length: int,
                   pad_id: int = 0, pack: bool = True) -> dict[str, np.ndarray]:
    """A batch from ``(token_ids, loss_mask)`` sequences: each sequence in one row (``pack=False``) or
    first-fit packed into ``rows`` rows of ``length`` tokens (``pack=True``). Raises if they do not fit
    (the caller sizes batches; sequences longer than ``length`` must be cut or dropped before)."""
    ids = np.full((rows, length), pad_id, np.int32)
    seg = np.zeros((rows, length), np.int32)
    lm = np.zeros((rows, length), np.int32)
    fill = [0] * rows
    count = [0] * rows
    r = 0
    for toks, mask in seqs:
        n = len(toks)
        if n > length:
            raise ValueError(f"a sequence of {n} tokens does not fit rows of {length}")
        if pack:
            r = next((i for i in range(rows) if fill[i] + n <= length), None)
        elif r is not None and r >= rows:
            r = None
        if r is None:
            raise ValueError(f"{len(seqs)} sequences do not fit in {rows} rows of {length} tokens")
        a = fill[r]
        ids[r, a:a + n] = toks
        lm[r, a:a + n] = mask
        count[r] += 1
        seg[r, a:a + n] = count[r]
        fill[r] += n
        if not pack:
            r += 1
    return {"input_ids": ids, "segment_ids": seg, "loss_mask": lm}
