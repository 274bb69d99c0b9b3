"""Properties every optimizer of the family (part A) shares: dtypes, abstract init, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from crosscheck import mixed_params
from family_a_support import committed

import gradchain as gc

# name -> (factory, extra update arguments as functions of the loss)
FAMILY = {
    "nadam": (lambda: gc.nadam(1e-3), {}),
    "nadamw_torch_schedule": (lambda: gc.nadamw(1e-3, momentum_decay=4e-3), {}),
    "radam": (lambda: gc.radam(1e-3), {}),
    "amsgrad": (lambda: gc.amsgrad(1e-3), {}),
    "adamax": (lambda: gc.adamax(1e-3), {}),
    "adamaxw": (lambda: gc.adamaxw(1e-3), {}),
    "adagrad": (lambda: gc.adagrad(1e-2), {}),
    "lion": (lambda: gc.lion(1e-4), {}),
    "lamb": (lambda: gc.lamb(1e-3), {}),
    "lars": (lambda: gc.lars(1e-3), {}),
    "sophia": (lambda: gc.sophia(1e-3), {"obj_fn": lambda loss: loss}),
    "prodigy": (lambda: gc.prodigy(), {}),
    "dadapt_adamw": (lambda: gc.dadapt_adamw(), {}),
}


def loss(params):
    return sum(jnp.sum(jnp.cosh(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_jitted_steps_keep_dtypes_stay_finite_and_trace_once(name):
    build, extra = FAMILY[name]
    tx = build()
    params = committed(mixed_params())
    state = tx.init(params)
    init_dtypes = _dtypes(state)
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(None)
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p, **{k: f(loss) for k, f in extra.items()})
        return gc.apply_updates(p, u), s, u

    for _ in range(3):
        params, state, updates = step(params, state)
    assert _dtypes(updates) == _dtypes(params) == _dtypes(mixed_params())
    assert _dtypes(state) == init_dtypes
    assert len(traces) == 1
    for leaf in jax.tree.leaves((params, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_abstract_init_matches_concrete_init(name):
    tx = FAMILY[name][0]()
    params = mixed_params()
    abstract = jax.eval_shape(tx.init, params)
    concrete = tx.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete)):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


# State bytes per parameter for float32 and for bfloat16 parameters under gc.with_float32_state
# (the table in docs/optimizers.md): moments of bfloat16 parameters are then float32
# (ALGORITHMS.md §14), and so is Prodigy's copy of the initial parameters. Sophia's
# estimator adds 8 bytes in all (its PRNG key). By default (optax's dtypes) every bfloat16 figure
# is half the float32 one.
STATE_BYTES_PER_PARAM = {
    "adam": (8, 8),
    "nadam": (8, 8),
    "nadamw_torch_schedule": (8, 8),
    "radam": (8, 8),
    "amsgrad": (12, 12),
    "adamax": (8, 8),
    "adamaxw": (8, 8),
    "adagrad": (4, 4),
    "lion": (4, 4),
    "lion_bf16_momentum": (2, 2),
    "lamb": (8, 8),
    "lars": (4, 4),
    "sophia": (8, 8),
    "prodigy": (16, 16),
    "dadapt_adamw": (12, 12),
}
MEMORY_CASES = {
    **{name: build for name, (build, _) in FAMILY.items()},
    "adam": lambda: gc.adam(1e-3),
    "lion_bf16_momentum": lambda: gc.lion(1e-4, mu_dtype=jnp.bfloat16),
}


@pytest.mark.parametrize("name", sorted(STATE_BYTES_PER_PARAM))
def test_state_memory_per_parameter(name):
    tx = MEMORY_CASES[name]()

    def per_param(tx, dtype):
        params = {
            "w": jax.ShapeDtypeStruct((1024, 1024), dtype),
            "b": jax.ShapeDtypeStruct((1024,), dtype),
        }
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        state = jax.eval_shape(tx.init, params)
        total = sum(
            int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)
        )
        return round(total / n, 2)

    f32, option = per_param(tx, jnp.float32), per_param(gc.with_float32_state(tx), jnp.bfloat16)
    assert (f32, option) == STATE_BYTES_PER_PARAM[name]
    # The default keeps the parameters' dtype, as optax: half the bytes for bfloat16 (Sophia's
    # 8-byte PRNG key is spread over 2^20 parameters); an explicit mu_dtype is kept by both.
    # Prodigy and D-Adaptation keep float32 moments by default (their estimates overflow in
    # bfloat16); Prodigy's copy of the parameters keeps their dtype.
    default = per_param(tx, jnp.bfloat16)
    expected = {"lion_bf16_momentum": option, "dadapt_adamw": f32, "prodigy": f32 - 2}
    assert default == expected.get(name, pytest.approx(f32 / 2, abs=0.01))
