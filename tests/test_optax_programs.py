"""Programs written for optax run unchanged with ``import gradchain as optax``.

Each program below is plain optax code written once, as a function of the ``optax`` module it
uses, the way a user would write it after ``import optax``: the test runs the same source with
optax and with gradchain and compares what the program records at every step. These are the
programs issue #17 names (a flax ``nnx.Optimizer`` classifier, an equinox program, a
meta-learning loop over ``state.hyperparams["learning_rate"]``, a ``reduce_on_plateau`` loop and
a ``MultiSteps`` gradient-accumulation loop); each once stopped at its first line touching
``optax.losses``, ``optax.tree``, ``inject_hyperparams`` or ``optax.contrib``.

Tolerance. Both libraries compute the same algebra in float32 but not always in the same order
(gradchain forms a clip factor once where optax divides then multiplies, folds bias corrections
into one scale, ...), so single steps agree to a few float32 ulps, not bit for bit. Training
feeds each step's rounding into the next; over these short runs (at most a few hundred steps on
well-conditioned problems) the drift stays within ``RTOL = 1e-5`` relative, about 80 ulps of
float32 (eps 1.2e-7), with ``ATOL = 1e-6`` for losses that approach 0 (measured: at most 1.3e-6
relative, in the 300-step plateau loop; 0 to 4e-7 in the others). A wrong rule (a missing
bias correction, a different decay, a learning rate halved at another step) moves the losses by
1e-3 or more within a few steps, orders of magnitude outside it. Discrete decisions (when the
plateau rule fires, when MultiSteps applies its update) must match exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax as real_optax
import pytest

import gradchain

RTOL = 1e-5
ATOL = 1e-6


def _assert_same_run(ours, theirs, what="losses"):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=what)


def _run_both(program, *args):
    """``program(optax_module, *args)`` with optax, then with gradchain in its place."""
    return program(gradchain, *args), program(real_optax, *args)


# ---------------------------------------------------------------------------------------------
# 1. A flax nnx classifier of 8x8 digits with nnx.Optimizer and AdamW


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)


def digits_classifier(optax, epochs=2, batch_size=128):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(64, 64, rngs=rngs)
            self.out = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    images, labels = _digits()
    model = MLP(nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 5, epochs * 14)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return loss, optax.tree.norm(grads)

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    losses, norms, accuracies = [], [], []
    order = np.random.default_rng(0)
    for _ in range(epochs):
        perm = order.permutation(len(labels))
        for start in range(0, len(labels) - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            loss, norm = train_step(model, optimizer, images[idx], labels[idx])
            losses.append(float(loss))
            norms.append(float(norm))
        accuracies.append(float(accuracy(model, images, labels)))
    return losses, norms, accuracies


def test_flax_nnx_digits_classifier_gives_optax_losses():
    ours, theirs = _run_both(digits_classifier)
    _assert_same_run(ours[0], theirs[0], "losses")
    _assert_same_run(ours[1], theirs[1], "gradient norms")
    _assert_same_run(ours[2], theirs[2], "accuracy per epoch")
    assert theirs[2][-1] > 0.6  # it trains (chance is 0.1): the comparison is not of a stall


# ---------------------------------------------------------------------------------------------
# 2. An equinox regression with a clipped AdamW


def equinox_regression(optax, steps=60):
    import equinox as eqx

    key_data, key_model = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_data, (64, 3))
    y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:]
    model = eqx.nn.MLP(3, 1, width_size=32, depth=2, activation=jax.nn.tanh, key=key_model)

    optim = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3))
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, x, y):
        pred = jax.vmap(model)(x)
        return optax.losses.l2_loss(pred, y).mean()

    @eqx.filter_jit
    def make_step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss

    losses = []
    for _ in range(steps):
        model, opt_state, loss = make_step(model, opt_state, x, y)
        losses.append(float(loss))
    return losses


def test_equinox_program_gives_optax_losses():
    ours, theirs = _run_both(equinox_regression)
    _assert_same_run(ours, theirs)
    assert theirs[-1] < 0.5 * theirs[0]


# ---------------------------------------------------------------------------------------------
# 3. Meta-learning the learning rate through state.hyperparams (optax's meta-learning example)


def meta_learning(optax, outer_steps=20, inner_steps=3):
    rng = np.random.default_rng(1)
    w_true = jnp.asarray(rng.standard_normal((4,)), jnp.float32)
    xs = jnp.asarray(rng.standard_normal((outer_steps, inner_steps + 1, 16, 4)), jnp.float32)
    ys = xs @ w_true

    def loss(params, batch):
        x, y = batch
        return optax.losses.squared_error(x @ params, y).mean()

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
    meta_opt = optax.adam(learning_rate=0.1)

    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state

    def outer_loss(eta, params, state, x, y):
        # The learning rate is a function of eta, set in the state between steps and
        # differentiated through the inner steps.
        state.hyperparams["learning_rate"] = jax.nn.sigmoid(eta)
        for i in range(inner_steps):
            params, state = step(params, state, (x[i], y[i]))
        return loss(params, (x[-1], y[-1])), (params, state)

    @jax.jit
    def outer_step(eta, params, meta_state, state, x, y):
        (value, (params, state)), grad = jax.value_and_grad(outer_loss, has_aux=True)(
            eta, params, state, x, y
        )
        meta_updates, meta_state = meta_opt.update(grad, meta_state)
        eta = optax.apply_updates(eta, meta_updates)
        return eta, params, meta_state, state, value

    eta = jnp.asarray(-4.0)
    params = jnp.zeros(4)
    state = opt.init(params)
    meta_state = meta_opt.init(eta)
    losses, learning_rates = [], []
    for k in range(outer_steps):
        eta, params, meta_state, state, value = outer_step(
            eta, params, meta_state, state, xs[k], ys[k]
        )
        losses.append(float(value))
        learning_rates.append(float(state.hyperparams["learning_rate"]))
    return losses, learning_rates


def test_meta_learning_the_learning_rate_gives_optax_losses():
    ours, theirs = _run_both(meta_learning)
    _assert_same_run(ours[0], theirs[0], "outer losses")
    _assert_same_run(ours[1], theirs[1], "learning rates read from the state")
    assert theirs[1][-1] > 2 * theirs[1][0]  # the outer loop moved the learning rate


# ---------------------------------------------------------------------------------------------
# 4. A reduce_on_plateau loop


def plateau_loop(optax, steps=300):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((128, 8)), jnp.float32)
    y = x @ jnp.asarray(rng.standard_normal((8,)), jnp.float32) + 0.3 * jnp.asarray(
        rng.standard_normal((128,)), jnp.float32
    )
    batches = rng.integers(0, 128, size=(steps, 32))

    opt = optax.chain(
        optax.adam(5e-2),
        optax.contrib.reduce_on_plateau(
            factor=0.5, patience=5, rtol=1e-4, atol=0.0, cooldown=2, accumulation_size=5
        ),
    )
    params = jnp.zeros(8)
    state = opt.init(params)

    def loss_fn(params, idx):
        return optax.losses.squared_error(x[idx] @ params, y[idx]).mean()

    @jax.jit
    def step(params, state, idx):
        loss, grads = jax.value_and_grad(loss_fn)(params, idx)
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    losses, scales = [], []
    for idx in batches:
        params, state, loss = step(params, state, idx)
        losses.append(float(loss))
        scales.append(float(optax.tree.get(state, "scale")))
    return losses, scales


def test_reduce_on_plateau_loop_gives_optax_losses_and_scales():
    ours, theirs = _run_both(plateau_loop)
    # The scale is a sequence of discrete halvings: the same steps, the same values.
    np.testing.assert_array_equal(ours[1], theirs[1])
    _assert_same_run(ours[0], theirs[0], "losses")
    assert min(theirs[1]) <= 0.25  # the plateau rule fired, more than once


# ---------------------------------------------------------------------------------------------
# 5. Gradient accumulation with MultiSteps


def accumulation_loop(optax, steps=40, k=4):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((steps, 16, 5)), jnp.float32)
    y = jnp.tanh(x @ jnp.asarray(rng.standard_normal((5,)), jnp.float32))
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}

    opt = optax.MultiSteps(optax.adamw(3e-2, weight_decay=1e-2), every_k_schedule=k)
    state = opt.init(params)

    def loss_fn(params, x, y):
        pred = jnp.tanh(x @ params["w"] + params["b"])
        return optax.losses.squared_error(pred, y).mean()

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses, applied, gradient_steps = [], [], []
    for i in range(steps):
        params, state, loss = step(params, state, x[i], y[i])
        losses.append(float(loss))
        applied.append(bool(opt.has_updated(state)))
        gradient_steps.append(int(state.gradient_step))
    return losses, applied, gradient_steps, optax.tree.norm(params)


def test_multisteps_accumulation_loop_gives_optax_losses():
    ours, theirs = _run_both(accumulation_loop)
    assert ours[1] == theirs[1] == [i % 4 == 3 for i in range(40)]
    assert ours[2] == theirs[2] == [(i + 1) // 4 for i in range(40)]
    _assert_same_run(ours[0], theirs[0], "losses")
    _assert_same_run(ours[3], theirs[3], "parameter norm")


@pytest.mark.parametrize(
    "name",
    ["losses", "tree", "contrib", "inject_hyperparams", "MultiSteps", "apply_updates"],
)
def test_the_programs_meet_gradchain_not_optax(name):
    # The comparisons above are between two libraries only if gradchain's names are its own.
    assert getattr(gradchain, name) is not getattr(real_optax, name)
