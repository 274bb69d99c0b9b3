"""Connectionist temporal classification (Graves et al., 2006), as in ``optax.losses``."""

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_rank, check_shapes_equal

__all__ = ["ctc_loss", "ctc_loss_with_forward_probs"]


def ctc_loss_with_forward_probs(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CTC loss per sequence, with the forward log-probabilities of the blank and label states.

    Args:
      logits: ``[B, T, K]`` unnormalized class scores per frame.
      logit_paddings: ``[B, T]``, 1.0 on padded frames, 0.0 on real ones.
      labels: ``[B, N]`` integer label sequences.
      label_paddings: ``[B, N]``, 1.0 on padded labels (which must be at the end).
      blank_id: the class index of the blank symbol.
      log_epsilon: the log-probability standing for "impossible" (finite, so sums stay finite).

    Returns:
      ``(per_seq_loss [B], logalpha_blank [T, B, N+1], logalpha_emit [T, B, N])``: the negative
      log-likelihood of each label sequence and the forward variables of the states "after
      ``n`` labels, in a blank" and "emitting label ``n``".
    """
    check_rank(logits, 3)
    check_rank(labels, 2)
    check_shapes_equal(labels, label_paddings)
    check_shapes_equal(logits[..., 0], logit_paddings)
    batch, _, num_classes = logits.shape
    label_batch, max_labels = labels.shape
    if label_batch != batch:
        raise ValueError(f"Expected `labels` to have batch size {batch}, got {label_batch}.")

    log_probs = jax.nn.log_softmax(logits)
    label_lengths = max_labels - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
    # A label equal to the next one cannot be reached from it without a blank in between.
    repeat = jnp.pad((labels[:, :-1] == labels[:, 1:]).astype(jnp.float32), ((0, 0), (0, 1)))

    blank_per_frame = jnp.transpose(log_probs[:, :, blank_id : blank_id + 1], (1, 0, 2))
    emit_per_frame = jnp.transpose(
        jnp.einsum("btk,bnk->btn", log_probs, jax.nn.one_hot(labels, num_classes=num_classes)),
        (1, 0, 2),
    )

    def add_to_blank(blank, score):
        # Blank state n+1 follows emit state n; blank state 0 has no predecessor.
        return jnp.concatenate([blank[:, :1], jnp.logaddexp(blank[:, 1:], score)], axis=-1)

    def step(carry, frame):
        prev_blank, prev_emit = carry
        emit_lp, blank_lp, pad = frame
        blank = add_to_blank(prev_blank, prev_emit + log_epsilon * repeat)
        emit = jnp.logaddexp(blank[:, :-1] + emit_lp, prev_emit + emit_lp)
        next_blank = add_to_blank(
            blank + blank_lp, prev_emit + blank_lp + log_epsilon * (1.0 - repeat)
        )
        pad = pad.reshape((batch, 1))
        emit = pad * prev_emit + (1.0 - pad) * emit
        next_blank = pad * prev_blank + (1.0 - pad) * next_blank
        return (next_blank, emit), (next_blank, emit)

    init_blank = jnp.full((batch, max_labels + 1), log_epsilon).at[:, 0].set(0.0)
    init_emit = jnp.full((batch, max_labels), log_epsilon)
    frames = (emit_per_frame, blank_per_frame, logit_paddings.T)
    _, (alpha_blank, alpha_emit) = jax.lax.scan(step, (init_blank, init_emit), frames)

    final = add_to_blank(alpha_blank[-1], alpha_emit[-1])
    alpha_blank = alpha_blank.at[-1].set(final)
    at_length = jax.nn.one_hot(label_lengths, num_classes=max_labels + 1)
    return -jnp.einsum("bn,bn->b", final, at_length), alpha_blank, alpha_emit


def ctc_loss(
    logits: jax.Array,
    logit_paddings: jax.Array,
    labels: jax.Array,
    label_paddings: jax.Array,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> jax.Array:
    """CTC loss per sequence, ``[B]``; see :func:`ctc_loss_with_forward_probs` for the arguments."""
    loss, _, _ = ctc_loss_with_forward_probs(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id, log_epsilon=log_epsilon
    )
    return loss
