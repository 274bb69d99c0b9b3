"""Segmentation losses (Dice and its generalizations), as in ``optax.losses``.

Predictions are ``[batch, ..., classes]`` logits (or probabilities with
``apply_softmax=False``), targets the matching one-hot or soft masks.
"""

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_rank, check_shapes_equal

__all__ = ["binary_dice_loss", "dice_loss", "multiclass_generalized_dice_loss"]

_REDUCTIONS = {
    "mean": lambda x, axis: jnp.mean(x, axis=axis),
    "sum": lambda x, axis: jnp.sum(x, axis=axis),
    "none": lambda x, axis: x,
}


def dice_loss(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    class_weights: jax.typing.ArrayLike | None = None,
    smooth: jax.typing.ArrayLike = 1.0,
    alpha: jax.typing.ArrayLike = 0.5,
    beta: jax.typing.ArrayLike = 0.5,
    apply_softmax: bool = True,
    reduction: str = "mean",
    ignore_background: bool = False,
    axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    """Dice / Tversky loss per example: ``1 - (I + smooth) / (I + alpha FP + beta FN + smooth)``.

    ``I = sum p t``, ``FP = sum p - I``, ``FN = sum t - I`` over the spatial axes (``axis``,
    default all but the first and last); ``alpha = beta = 0.5`` is the Dice loss (Milletari et
    al., 2016). Per-class losses are weighted by ``class_weights``, optionally drop class 0
    (``ignore_background``) and are reduced over classes by ``reduction`` ("mean", "sum" or
    "none"). A single channel uses a sigmoid instead of a softmax.

    Raises:
      ValueError: for mismatched shapes, an unknown reduction, or (``apply_softmax=False``)
        predictions that do not sum to 1 over classes.
    """
    if predictions.ndim == targets.ndim - 1:
        predictions = predictions[..., None]
    if targets.ndim == predictions.ndim - 1:
        targets = targets[..., None]
    check_shapes_equal(predictions, targets)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Unsupported reduction: {reduction}")
    if apply_softmax:
        if predictions.shape[-1] == 1:
            probs = jax.nn.sigmoid(predictions)
        else:
            probs = jax.nn.softmax(predictions, axis=-1)
    else:
        sums = jnp.sum(predictions, axis=-1)
        if not jnp.allclose(sums, 1.0, rtol=1e-05):
            raise ValueError(
                "When apply_softmax=False, predictions must be valid probability distributions "
                "that sum to 1 along the class axis. Found sum range: "
                f"[{jnp.min(sums):.6f}, {jnp.max(sums):.6f}]"
            )
        probs = predictions
    if axis is None:
        axis = tuple(range(1, probs.ndim - 1))
    intersection = jnp.sum(probs * targets, axis=axis)
    false_pos = jnp.sum(probs, axis=axis) - intersection
    false_neg = jnp.sum(targets, axis=axis) - intersection
    score = (intersection + smooth) / (intersection + alpha * false_pos + beta * false_neg + smooth)
    loss = 1.0 - score
    if class_weights is not None:
        check_rank(class_weights, 1)
        loss = loss * jnp.expand_dims(class_weights, tuple(range(loss.ndim - 1)))
    if ignore_background and probs.shape[-1] > 1:
        loss = loss[..., 1:]
    return _REDUCTIONS[reduction](loss, -1)


def multiclass_generalized_dice_loss(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_softmax: bool = True,
    ignore_background: bool = False,
) -> jax.Array:
    """Generalized Dice loss (Sudre et al., 2017): classes weighted by ``1 / frequency**2``
    (normalized to mean 1), averaged over examples and classes."""
    check_shapes_equal(predictions, targets)
    frequencies = jnp.sum(targets, axis=tuple(range(targets.ndim - 1)))
    weights = 1.0 / (frequencies**2 + 1e-7)
    weights = weights / jnp.sum(weights) * len(weights)
    per_class = dice_loss(
        predictions,
        targets,
        class_weights=weights,
        smooth=smooth,
        apply_softmax=apply_softmax,
        reduction="none",
        ignore_background=ignore_background,
    )
    return jnp.mean(per_class)


def binary_dice_loss(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_sigmoid: bool = True,
) -> jax.Array:
    """Dice loss of a single foreground channel (a trailing channel axis is added if absent)."""
    if predictions.ndim == targets.ndim and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return dice_loss(
        predictions, targets, smooth=smooth, apply_softmax=apply_sigmoid, reduction="mean"
    )
