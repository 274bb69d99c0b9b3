"""Classification losses: cross-entropies, margin losses and divergences, as in ``optax.losses``.

Every loss is elementwise over the leading (batch) dimensions and reduces only over the class
axis; the caller averages. Names, signatures, defaults and results are optax's.
"""

import operator
import warnings
from typing import cast

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_shapes_equal, check_subdtype
from gradchain.projections.euclidean import projection_simplex

__all__ = [
    "convex_kl_divergence",
    "generalized_kl_divergence",
    "hinge_loss",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "perceptron_loss",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sparsemax_loss",
]

Axis = int | tuple[int, ...] | None


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.typing.ArrayLike) -> jax.Array:
    """Binary cross-entropy of a sigmoid output, per element.

    ``-y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))`` for logits ``z`` and labels ``y`` in
    [0, 1] (soft labels allowed), computed with ``log_sigmoid`` so that large ``|z|`` stays
    finite.
    """
    check_subdtype(logits, jnp.floating)
    labels = jnp.astype(labels, logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def sigmoid_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: jax.typing.ArrayLike | None = None,
    gamma: jax.typing.ArrayLike = 2.0,
) -> jax.Array:
    """Focal loss (Lin et al., 2017): the binary cross-entropy weighted by ``(1 - p_t)**gamma``.

    ``p_t`` is the probability given to the true label; ``alpha`` (if given) weighs positives by
    ``alpha`` and negatives by ``1 - alpha``. ``log(1 - p_t)`` is computed as a weighted
    log-sum-exp of ``log p`` and ``log(1 - p)`` so that soft labels and saturated logits stay
    exact.
    """
    check_subdtype(logits, jnp.floating)
    labels = jnp.astype(labels, logits.dtype)
    ce = sigmoid_binary_cross_entropy(logits, labels)
    log_one_minus_pt = jax.scipy.special.logsumexp(
        jnp.stack([jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)], axis=-1),
        axis=-1,
        b=jnp.stack([1 - labels, labels], axis=-1),
    )
    loss = ce * jnp.exp(gamma * log_one_minus_pt)
    if alpha is None:
        return loss
    # jax.Array's operators win over numpy's, so this is a jax.Array even for a numpy alpha.
    return cast(jax.Array, (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss)


def hinge_loss(predictor_outputs: jax.Array, targets: jax.typing.ArrayLike) -> jax.Array:
    """Hinge loss ``max(0, 1 - y f)`` for outputs ``f`` and targets ``y`` in {-1, 1}."""
    return jnp.maximum(0, 1 - predictor_outputs * targets)


def perceptron_loss(predictor_outputs: jax.Array, targets: jax.typing.ArrayLike) -> jax.Array:
    """Perceptron loss ``max(0, -y f)`` for outputs ``f`` and targets ``y`` in {-1, 1}."""
    check_shapes_equal(predictor_outputs, targets)
    return jnp.maximum(0, -predictor_outputs * targets)


def sparsemax_loss(logits: jax.Array, labels: jax.typing.ArrayLike) -> jax.Array:
    """Binary sparsemax loss (Martins & Astudillo, 2016): ``sparse_plus(z)`` for label 0 and
    ``sparse_plus(-z)`` for label 1."""
    return jax.nn.sparse_plus(jnp.where(labels, -logits, logits))


@jax.custom_jvp
def _weighted_log_softmax(x, weights):
    # weights * log_softmax(x), and exactly 0 where the weight is 0 even if log_softmax is -inf.
    log_p = jax.nn.log_softmax(x, axis=-1)
    return jnp.where(weights != 0.0, weights * log_p, jnp.zeros_like(log_p))


@_weighted_log_softmax.defjvp
def _weighted_log_softmax_jvp(primals, tangents):
    # Written out so that the -inf entries masked by zero weights give zero, not NaN, tangents.
    (x, weights), (x_dot, weights_dot) = primals, tangents
    log_p = jax.nn.log_softmax(x, axis=-1)
    out = jnp.where(weights != 0.0, weights * log_p, jnp.zeros_like(log_p))
    mean_dot = jnp.sum(x_dot * jax.nn.softmax(x, axis=-1), axis=-1, keepdims=True)
    return out, weights * x_dot - weights * mean_dot + weights_dot * log_p


def safe_softmax_cross_entropy(logits: jax.Array, labels: jax.typing.ArrayLike) -> jax.Array:
    """Softmax cross-entropy ``-sum_k y_k log softmax(z)_k`` that stays finite when a logit is
    ``-inf`` under a zero label (masked classes), and has finite gradients there."""
    check_subdtype(logits, jnp.floating)
    return -jnp.sum(_weighted_log_softmax(logits, labels), axis=-1)


def _expand_where(where, logits, axis):
    if where is not None and where.ndim != logits.ndim:
        return jnp.expand_dims(where, axis)
    return where


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.typing.ArrayLike, axis: Axis = -1, where: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy ``-sum_k y_k log softmax(z)_k`` over ``axis``.

    ``labels`` are probabilities over the classes (one-hot or soft). ``where`` masks classes out
    of both the softmax and the sum; it may omit the class axis to mask whole examples.
    """
    check_subdtype(logits, jnp.floating)
    where = _expand_where(where, logits, axis)
    log_p = jax.nn.log_softmax(logits, axis, where)
    return -(labels * log_p).sum(axis, where=where)


def _canonical_axis(axis, ndim: int) -> int:
    axis = operator.index(axis)
    if -ndim <= axis < ndim:
        return axis % ndim
    raise ValueError(f"axis {axis} is out of bounds for array of dimension {ndim}")


def softmax_cross_entropy_with_integer_labels(
    logits: jax.Array,
    labels: jax.Array,
    axis: int | tuple[int, ...] = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """Softmax cross-entropy with the true class given by integer ``labels``.

    ``logsumexp(z) - z_label`` over ``axis``; a tuple ``axis`` treats those axes together as one
    flattened class axis. ``where`` masks classes; an example with every class masked has loss 0.
    """
    check_subdtype(logits, jnp.floating)
    check_subdtype(labels, jnp.integer)
    where = _expand_where(where, logits, axis)
    if isinstance(axis, int):
        axis = _canonical_axis(axis, logits.ndim)
    elif isinstance(axis, tuple):
        class_axes = tuple(_canonical_axis(a, logits.ndim) for a in axis)
        batch_axes = tuple(a for a in range(logits.ndim) if a not in class_axes)
        order = batch_axes + class_axes
        flat_shape = tuple(logits.shape[a] for a in batch_axes) + (-1,)
        logits = logits.transpose(order).reshape(flat_shape)
        if where is not None:
            where = where.transpose(order).reshape(flat_shape)
        axis = len(batch_axes)
    else:
        raise ValueError(
            "Keyword argument 'axis' must be of type 'int' or 'tuple[int, ...]' but actual "
            f"type is {type(axis)}."
        )
    label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, axis), axis=axis)
    loss = jax.nn.logsumexp(logits, axis=axis, where=where) - label_logits.take(0, axis=axis)
    if where is not None:
        loss = jnp.where(jnp.any(where, axis), loss, 0.0)
    return loss


def _dot_last(a, b):
    return jnp.einsum("...k,...k->...", a, b)


def multiclass_hinge_loss(scores: jax.Array, labels: jax.typing.ArrayLike) -> jax.Array:
    """Multiclass hinge loss (Crammer & Singer): ``max_k (s_k + [k != y]) - s_y``."""
    one_hot = jax.nn.one_hot(labels, scores.shape[-1])
    return jnp.max(scores + 1.0 - one_hot, axis=-1) - _dot_last(scores, one_hot)


def multiclass_perceptron_loss(scores: jax.Array, labels: jax.typing.ArrayLike) -> jax.Array:
    """Multiclass perceptron loss ``max_k s_k - s_y``."""
    one_hot = jax.nn.one_hot(labels, scores.shape[-1])
    return jnp.max(scores, axis=-1) - _dot_last(scores, one_hot)


def _sparsemax_loss_one(scores, label):
    # The Fenchel-Young loss of sparsemax: <p, s - s_y> + (1 - ||p||^2) / 2 with p the
    # sparsemax (simplex projection) of the scores; entries outside the support contribute 0.
    scores = jnp.asarray(scores)
    p = projection_simplex(scores)
    shifted = (scores - scores[label]).at[label].set(0.0)
    return jnp.dot(p, jnp.where(p, shifted, 0.0)) + 0.5 * (1.0 - jnp.dot(p, p))


def multiclass_sparsemax_loss(
    scores: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    """Multiclass sparsemax loss (Martins & Astudillo, 2016) for a batch of score vectors."""
    return jax.vmap(_sparsemax_loss_one)(scores, labels)


def poly_loss_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    epsilon: jax.typing.ArrayLike = 2.0,
    axis: Axis = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """Poly-1 loss (Leng et al., 2022): ``CE + epsilon * sum_k y_k (1 - p_k)``."""
    check_subdtype(logits, jnp.floating)
    check_subdtype(labels, jnp.floating)
    p = jax.nn.softmax(logits, axis=axis, where=where)
    one_minus_pt = jnp.sum(labels * (1 - p), axis=axis, where=where)
    return softmax_cross_entropy(logits, labels, axis=axis, where=where) + epsilon * one_minus_pt


def kl_divergence(
    log_predictions: jax.Array, targets: jax.Array, axis: Axis = -1, where: jax.Array | None = None
) -> jax.Array:
    """``KL(targets || predictions) = sum_k t_k (log t_k - log p_k)``, with ``0 log 0 = 0``.

    The first argument is the log of the predicted distribution (as in PyTorch's ``kl_div``).
    """
    check_subdtype(log_predictions, jnp.floating)
    check_subdtype(targets, jnp.floating)
    log_targets = jnp.where(targets == 0, 0, jnp.log(targets))
    return jnp.sum(targets * (log_targets - log_predictions), axis=axis, where=where)


def kl_divergence_with_log_targets(
    log_predictions: jax.Array,
    log_targets: jax.Array,
    axis: Axis = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """``KL(targets || predictions)`` with both distributions given as logs."""
    check_subdtype(log_predictions, jnp.floating)
    check_subdtype(log_targets, jnp.floating)
    loss = jnp.exp(log_targets) * (log_targets - log_predictions)
    return jnp.sum(loss, axis=axis, where=where)


def generalized_kl_divergence(
    log_predictions: jax.Array, targets: jax.Array, axis: Axis = -1, where: jax.Array | None = None
) -> jax.Array:
    """The generalized KL divergence ``sum_k t_k log(t_k / p_k) + p_k - t_k`` of unnormalized
    non-negative measures, convex in the predictions."""
    kl = kl_divergence(log_predictions, targets, axis=axis, where=where)
    return kl + jnp.sum(jnp.exp(log_predictions) - targets, axis=axis, where=where)


def convex_kl_divergence(
    log_predictions: jax.Array, targets: jax.Array, axis: Axis = -1, where: jax.Array | None = None
) -> jax.Array:
    """optax's deprecated name of :func:`generalized_kl_divergence` (warns as optax does)."""
    warnings.warn(
        "The function convex_kl_divergence is deprecated. Please use generalized_kl_divergence "
        "instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)
