"""gradchain.losses: optax's own losses tests rerouted to gradchain, plus direct cross-checks.

The seven ``optax/losses/*_test.py`` files run with the module names their tests call
(``_classification``, ``_regression``, ...) rebound to :mod:`gradchain.losses`. The
cross-checks below compare each loss with optax's on random inputs inside ``jax.jit``, values and
gradients, with tolerances of a few float32 ulps of the loss scale.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_rebind import bind_optax_testcases, load, optax_settings  # noqa: F401

import gradchain as gc
import gradchain.losses as gl

_REBOUND = {
    "losses/_classification_test.py": {"_classification": gl, "projections": gc.projections},
    "losses/_fenchel_young_test.py": {"_fenchel_young": gl, "_classification": gl},
    "losses/_ranking_test.py": {"_ranking": gl},
    "losses/_regression_test.py": {"_regression": gl},
    "losses/_segmentation_test.py": {"_segmentation": gl},
    "losses/_self_supervised_test.py": {"_self_supervised": gl},
    "losses/_smoothing_test.py": {"_smoothing": gl},
}
_MODULES = {path: load(path, **names) for path, names in _REBOUND.items()}
bind_optax_testcases(globals(), _MODULES)


def test_the_rerouted_optax_tests_call_gradchain():
    for path, names in _REBOUND.items():
        for attr in names:
            assert getattr(_MODULES[path], attr).__name__.startswith("gradchain."), (path, attr)
    assert gl.l2_loss.__module__ == "gradchain.losses.regression"


def test_every_optax_loss_is_in_gradchain_with_optax_signature():
    names = [n for n in dir(optax.losses) if not n.startswith("_")]
    for name in names:
        ours, theirs = (
            inspect.signature(getattr(gl, name)),
            inspect.signature(getattr(optax.losses, name)),
        )
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name


def test_losses_optax_has_at_its_root_are_at_gradchain_root():
    for name in dir(optax.losses):
        if not name.startswith("_") and hasattr(optax, name):
            assert getattr(gc, name) is getattr(gl, name), name


def _random(shape, seed, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


_B, _K = 6, 5
_labels_int = jax.random.randint(jax.random.key(7), (_B,), 0, _K)
_probs = jax.nn.softmax(_random((_B, _K), 8))
_binary = (jax.random.uniform(jax.random.key(9), (_B, _K)) > 0.5).astype(jnp.float32)
_mask = jax.random.uniform(jax.random.key(10), (_B, _K)) > 0.3

# (name, function of (gradchain-or-optax losses namespace, logits) -> per-example loss)
_CASES = {
    "softmax_cross_entropy": lambda L, z: L.softmax_cross_entropy(z, _probs),
    "softmax_cross_entropy_masked": lambda L, z: L.softmax_cross_entropy(z, _probs, where=_mask),
    "softmax_cross_entropy_with_integer_labels": (
        lambda L, z: L.softmax_cross_entropy_with_integer_labels(z, _labels_int)
    ),
    "integer_labels_axis_tuple": (
        lambda L, z: L.softmax_cross_entropy_with_integer_labels(
            z.reshape(_B, 1, _K), _labels_int, axis=(1, 2)
        )
    ),
    "safe_softmax_cross_entropy": lambda L, z: L.safe_softmax_cross_entropy(z, _probs),
    "sigmoid_binary_cross_entropy": lambda L, z: L.sigmoid_binary_cross_entropy(z, _binary),
    "sigmoid_focal_loss": lambda L, z: L.sigmoid_focal_loss(z, _binary, alpha=0.25, gamma=2.0),
    "poly_loss_cross_entropy": lambda L, z: L.poly_loss_cross_entropy(z, _probs, epsilon=1.5),
    "kl_divergence": lambda L, z: L.kl_divergence(jax.nn.log_softmax(z), _probs),
    "kl_divergence_with_log_targets": (
        lambda L, z: L.kl_divergence_with_log_targets(jax.nn.log_softmax(z), jnp.log(_probs))
    ),
    "generalized_kl_divergence": lambda L, z: L.generalized_kl_divergence(z, _probs),
    "hinge_loss": lambda L, z: L.hinge_loss(z, 2 * _binary - 1),
    "perceptron_loss": lambda L, z: L.perceptron_loss(z, 2 * _binary - 1),
    "multiclass_hinge_loss": lambda L, z: L.multiclass_hinge_loss(z, _labels_int),
    "multiclass_perceptron_loss": lambda L, z: L.multiclass_perceptron_loss(z, _labels_int),
    "multiclass_sparsemax_loss": lambda L, z: L.multiclass_sparsemax_loss(z, _labels_int),
    "sparsemax_loss": lambda L, z: L.sparsemax_loss(z, _binary),
    "squared_error": lambda L, z: L.squared_error(z, _probs),
    "l2_loss": lambda L, z: L.l2_loss(z, _probs),
    "huber_loss": lambda L, z: L.huber_loss(z, _probs, delta=0.5),
    "log_cosh": lambda L, z: L.log_cosh(z, _probs),
    "cosine_similarity": lambda L, z: L.cosine_similarity(z, _probs, epsilon=1e-6),
    "cosine_distance": lambda L, z: L.cosine_distance(z, _probs, where=_mask),
    "smooth_labels": lambda L, z: L.smooth_labels(jax.nn.softmax(z), 0.1),
    "ranking_softmax_loss": lambda L, z: L.ranking_softmax_loss(z, _binary, where=_mask),
    "ntxent": lambda L, z: L.ntxent(z, jnp.array([0, 1, 0, 1, 2, 2])),
    "triplet_margin_loss": lambda L, z: L.triplet_margin_loss(z, _probs, jnp.roll(z, 1, 0)),
    "dice_loss": lambda L, z: L.dice_loss(z.reshape(2, 3, _K), _probs.reshape(2, 3, _K)),
    "multiclass_generalized_dice_loss": (
        lambda L, z: L.multiclass_generalized_dice_loss(
            z.reshape(2, 3, _K), _probs.reshape(2, 3, _K)
        )
    ),
    "binary_dice_loss": lambda L, z: L.binary_dice_loss(z, _binary),
    "fenchel_young_logsumexp": (
        lambda L, z: L.make_fenchel_young_loss(jax.scipy.special.logsumexp)(z, _probs)
    ),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_loss_and_gradient_match_optax_under_jit(case):
    fn = _CASES[case]
    logits = 3.0 * _random((_B, _K), 1)

    def total(L):
        return jax.jit(jax.value_and_grad(lambda z: jnp.sum(fn(L, z))))(logits)

    ours, our_grad = total(gl)
    with jax.numpy_rank_promotion("allow"):  # optax's dice losses broadcast class weights
        theirs, their_grad = total(optax.losses)
    scale = max(1.0, float(jnp.abs(theirs)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(our_grad, their_grad, rtol=1e-5, atol=1e-5)


def test_ctc_loss_and_forward_probs_match_optax():
    batch, frames, classes, max_labels = 3, 12, 6, 4
    logits = _random((batch, frames, classes), 2)
    logit_paddings = (jnp.arange(frames)[None, :] >= jnp.array([[12], [9], [7]])).astype(
        jnp.float32
    )
    labels = jax.random.randint(jax.random.key(3), (batch, max_labels), 1, classes)
    labels = labels.at[1, 1].set(labels[1, 0])  # a repeated label needs a blank in between
    label_paddings = (jnp.arange(max_labels)[None, :] >= jnp.array([[4], [3], [1]])).astype(
        jnp.float32
    )
    args = (logits, logit_paddings, labels, label_paddings)
    ours = jax.jit(gl.ctc_loss_with_forward_probs)(*args)
    theirs = optax.losses.ctc_loss_with_forward_probs(*args)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    grad = jax.grad(lambda z: jnp.sum(gl.ctc_loss(z, *args[1:], blank_id=0)))(logits)
    expected = jax.grad(lambda z: jnp.sum(optax.losses.ctc_loss(z, *args[1:])))(logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_safe_softmax_cross_entropy_is_finite_with_masked_classes():
    logits = jnp.array([[0.0, -jnp.inf, 1.0]])
    labels = jnp.array([[0.5, 0.0, 0.5]])
    value, grad = jax.value_and_grad(lambda z: gl.safe_softmax_cross_entropy(z, labels).sum())(
        logits
    )
    assert jnp.isfinite(value) and jnp.all(jnp.isfinite(grad))


def test_convex_kl_divergence_warns_and_equals_generalized_kl():
    log_p, q = jnp.log(_probs), jax.nn.softmax(_random((_B, _K), 4))
    with pytest.warns(DeprecationWarning, match="generalized_kl_divergence"):
        old = gl.convex_kl_divergence(log_p, q)
    np.testing.assert_array_equal(old, gl.generalized_kl_divergence(log_p, q))


def test_loss_input_checks_raise_optax_errors():
    with pytest.raises(TypeError, match="subdtype"):
        gl.softmax_cross_entropy_with_integer_labels(jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="Shape mismatch"):
        gl.squared_error(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="rank 3"):
        gl.ctc_loss(jnp.zeros((2, 3)), jnp.zeros(2), jnp.zeros((2, 1)), jnp.zeros((2, 1)))
