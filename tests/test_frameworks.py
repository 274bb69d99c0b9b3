"""gradchain optimizers in the training loops of flax nnx and equinox, against optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from crosscheck import assert_trees_close

import gradchain as gc

STEPS = 20


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
    return x, jnp.sin(x[:, :2]) + 0.5 * x[:, 2:]


def _decay_kernels(tree):
    """optax's mask for the same selection, written without gradchain."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: (
            "kernel" in jax.tree_util.keystr(path) or "weight" in jax.tree_util.keystr(path)
        ),
        tree,
    )


def test_a_gradchain_optimizer_is_the_tx_of_a_flax_nnx_optimizer():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(4, 16, rngs=rngs)
            self.norm = nnx.LayerNorm(16, rngs=rngs)
            self.out = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(self.norm(jax.nn.tanh(self.hidden(x))))

    x, y = _data()

    def train(tx):
        model = MLP(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(x) - y)))(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer)) for _ in range(STEPS)]
        return nnx.as_pure(nnx.state(model, nnx.Param)), losses

    # Parameter groups by path: AdamW with decay on the kernels, Adam on biases and the norm.
    groups = gc.partition(
        {"decay": gc.adamw(0.01, weight_decay=0.1), "no_decay": gc.adam(0.01)},
        gc.path_labels({r"bias|norm": "no_decay"}, default="decay"),
    )
    ours, losses = train(groups)
    ref, _ = train(optax.adamw(0.01, weight_decay=0.1, mask=_decay_kernels))
    # optax forms 1 - b2 from a Python double, gradchain from its float32 live
    # hyperparameter (ALGORITHMS.md §14): a 1e-5 relative difference per step in the Adam
    # denominator, so 20 steps of size 0.01 differ by a few 1e-6 (3e-6 measured).
    assert_trees_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert losses[-1] < 0.5 * losses[0]


def test_a_gradchain_optimizer_trains_an_equinox_model_through_eqx_filter():
    import equinox as eqx

    x, y = _data()
    model = eqx.nn.MLP(4, 2, 16, depth=2, key=jax.random.PRNGKey(0))

    def train(tx):
        m = model
        opt_state = tx.init(eqx.filter(m, eqx.is_array))

        @eqx.filter_jit
        def step(m, opt_state):
            loss, grads = eqx.filter_value_and_grad(
                lambda m: jnp.mean(jnp.square(jax.vmap(m)(x) - y))
            )(m)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(m, eqx.is_array))
            return eqx.apply_updates(m, updates), opt_state, loss

        losses = []
        for _ in range(STEPS):
            m, opt_state, loss = step(m, opt_state)
            losses.append(float(loss))
        return eqx.filter(m, eqx.is_array), opt_state, losses

    tx = gc.apply_if_finite(
        gc.chain(
            gc.clip_by_global_norm(1.0),
            gc.adamw(0.01, weight_decay=0.1, mask=gc.path_mask(include="weight")),
        ),
        max_consecutive_errors=3,
    )
    ours, state, losses = train(tx)
    ref, _, _ = train(
        optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(0.01, weight_decay=0.1, mask=_decay_kernels)
        )
    )
    assert_trees_close(ours, ref, rtol=1e-5, atol=1e-5)  # as for flax above
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.inner_state.adamw.scale_by_adam.count) == STEPS
