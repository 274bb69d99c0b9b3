"""What a compiled step reads and writes, as XLA counts it, and that fusing kept optax's numbers.

The traffic of a step is ``cost_analysis()["bytes accessed"]`` of the compiled
``update + apply_updates``: it depends on how XLA fused the step, not on the machine's load, so
the assertions below are exact statements about passes over memory, not timings.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

# Large enough that the scalars (counters, hyperparameters) are noise in bytes per parameter.
PARAMS = {"w": jnp.ones((256, 256)), "b": jnp.ones((256,))}
N = 256 * 256 + 256
SLACK = 0.1  # bytes per parameter taken by the scalars


def _schedule(count):
    return 1e-3 * jnp.minimum(1.0, (count + 1) / 10)


def traffic(tx, apply_updates) -> float:
    """Bytes read and written per parameter by one compiled, donated step."""
    state = tx.init(PARAMS)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply_updates(p, u), s

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(PARAMS, state, PARAMS).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["bytes accessed"] / N


OPTIMIZERS = {
    "adamw": (
        lambda: gc.adamw(_schedule, weight_decay=0.1),
        lambda: optax.adamw(_schedule, weight_decay=0.1),
    ),
    "sgd+momentum": (lambda: gc.sgd(0.1, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_clipping_by_global_norm_costs_one_more_read_of_the_gradients(name):
    build, _ = OPTIMIZERS[name]
    plain = traffic(build(), gc.apply_updates)
    clipped = traffic(gc.chain(gc.clip_by_global_norm(1.0), build()), gc.apply_updates)
    assert clipped - plain <= 4 + SLACK, (plain, clipped)


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "clipped"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_step_moves_no_more_bytes_than_optax(name, clip):
    build, build_optax = OPTIMIZERS[name]
    ours, theirs = build(), build_optax()
    if clip:
        ours = gc.chain(gc.clip_by_global_norm(1.0), ours)
        theirs = optax.chain(optax.clip_by_global_norm(1.0), theirs)
    assert traffic(ours, gc.apply_updates) <= traffic(theirs, optax.apply_updates) + SLACK


def test_adafactor_moves_fewer_bytes_than_adamw():
    # Its state is a row and a column per matrix: only the gradient's statistics, the update's
    # RMS and the parameter's RMS cost passes, and the reductions square g as they read it.
    adafactor = traffic(gc.adafactor(1e-3, min_dim_size_to_factor=128), gc.apply_updates)
    assert adafactor < traffic(gc.adamw(1e-3), gc.apply_updates)


def _clip_both(grads, max_norm=1.0):
    ours, _ = gc.clip_by_global_norm(max_norm).update(
        grads, gc.clip_by_global_norm(max_norm).init(grads)
    )
    theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    return ours, theirs


def test_clipping_scales_by_one_factor_with_optax_numbers():
    grads = {"a": jnp.arange(1.0, 6.0), "b": -jnp.ones((2, 3))}
    ours, theirs = _clip_both(grads)
    # One multiply by max_norm/norm instead of optax's divide-then-multiply: one rounding apart.
    for k in grads:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=2e-7, atol=0)
    np.testing.assert_allclose(float(gc.global_norm(ours)), 1.0, rtol=1e-6)


def test_clipping_below_the_threshold_returns_the_gradients_bit_for_bit():
    grads = {"a": jnp.array([0.1, -0.2, 0.3])}
    ours, _ = _clip_both(grads)
    np.testing.assert_array_equal(ours["a"], grads["a"])


@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan])
def test_clipping_non_finite_gradients_behaves_as_optax(bad):
    grads = {"a": jnp.array([1.0, bad, -2.0]), "b": jnp.array([3.0])}
    ours, theirs = _clip_both(grads)
    for k in grads:
        np.testing.assert_array_equal(np.isnan(ours[k]), np.isnan(theirs[k]))
        np.testing.assert_array_equal(
            np.nan_to_num(ours[k], nan=7.0), np.nan_to_num(theirs[k], nan=7.0)
        )


# Distinct shapes, so that an instruction shaped like a parameter works per coordinate (the
# factored moments' row and column factors are vectors of other lengths).
SHAPED = {"w": jnp.ones((384, 256)), "b": jnp.ones((200,))}


def _per_coordinate_opcodes(tx):
    state = tx.init(SHAPED)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    text = jax.jit(step).lower(SHAPED, state, SHAPED).compile().as_text()
    shapes = "|".join(re.escape(",".join(map(str, p.shape))) for p in SHAPED.values())
    return set(re.findall(rf"= f32\[(?:{shapes})\]\{{[^}}]*\}} (\w+)\(", text))


@pytest.mark.parametrize(
    "build",
    [
        lambda: gc.adafactor(1e-3, min_dim_size_to_factor=1024),  # one v per weight
        lambda: gc.adafactor(1e-3),
        lambda: gc.rmsprop(1e-3),
        lambda: gc.adamw(1e-3),
    ],
    ids=["adafactor-unfactored", "adafactor", "rmsprop", "adamw"],
)
def test_no_per_coordinate_power_or_rsqrt(build):
    # XLA:CPU computes power and rsqrt without vectorizing them: ten times the cost of a divide
    # and a square root, enough to make a memory-bound step compute-bound.
    opcodes = _per_coordinate_opcodes(build())
    assert opcodes, "no per-coordinate instruction found: the pattern is stale"
    assert not opcodes & {"power", "rsqrt"}, opcodes


def test_adafactor_step_forms_the_clipped_update_in_the_pass_that_applies_it():
    # The gradient is read three times (row statistics, column statistics, the update's RMS
    # taken from g and the factors) and the parameter once for its RMS; the last pass reads both
    # and writes the parameter: 4 * 3 + 4 + 12 = 28 bytes. Unfused, the update U = G * (a b^T)
    # is written once and read twice more: 36. The row and column factors (256 floats each, read
    # by several passes) and the bias's unfactored moment add under a byte per parameter here;
    # any extra pass over the matrix would add 4.
    assert traffic(gc.adafactor(1e-3), gc.apply_updates) <= 28 + 1


# Leaves for the fused factored + block-clip step: factored along either axis order, a batch of
# matrices, an unfactored vector, and a bfloat16 matrix (which keeps the unfused arithmetic).
FACTORED_LEAVES = {
    "wide": (24, 40),
    "tall": (40, 24),
    "batched": (3, 20, 16),
    "vector": (50,),
    "half": (16, 24),
}


def _factored_stream(steps):
    key = jax.random.PRNGKey(7)
    out = []
    for t in range(steps):
        grads = {}
        for i, (name, shape) in enumerate(FACTORED_LEAVES.items()):
            k = jax.random.fold_in(jax.random.fold_in(key, t), i)
            g = jax.random.normal(k, shape) * jnp.linspace(1.0, 2.0, shape[-1]).reshape(
                (1,) * (len(shape) - 1) + (-1,)
            )
            grads[name] = g.astype(jnp.bfloat16 if name == "half" else jnp.float32)
        out.append(grads)
    return out


@pytest.mark.parametrize("threshold", [0.3, 100.0], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("axes", ["largest", "last"])
def test_fused_factored_block_clip_equals_the_two_transforms_in_turn(threshold, axes):
    factored = gc.factored_second_moment(min_dim_size_to_factor=8, factored_axes=axes)
    clip = gc.clip_by_block_rms(threshold)
    fused = gc.chain(factored, clip)
    assert factored.fuse_next(clip) is not None
    # A nested chain is one transformation: its neighbour is not fused with it.
    apart = gc.chain(gc.chain(factored), clip)
    grads = _factored_stream(25)
    params = jax.tree.map(jnp.zeros_like, grads[0])

    def run(tx):
        step = jax.jit(lambda g, s: tx.update(g, s, params))
        state, outs = tx.init(params), []
        for g in grads:
            u, state = step(g, state)
            outs.append(u)
        return outs, state

    (ours, ours_state), (ref, ref_state) = run(fused), run(apart)
    # The fused RMS sums the same squares in another order: a few float32 ulps on the clip
    # factor, hence on each update; unclipped steps are untouched by it. The bfloat16 leaf's
    # update is computed in bfloat16 (optax's arithmetic), where that factor can move the
    # rounding by up to 2 bfloat16 ulps (2 * 2^-7 relative at the bottom of a binade).
    for t, (a, b) in enumerate(zip(ours, ref)):
        for name in FACTORED_LEAVES:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_allclose(
                np.asarray(a[name], np.float32),
                np.asarray(b[name], np.float32),
                rtol=2**-6 if b[name].dtype == jnp.bfloat16 else 2e-6,
                atol=0,
                err_msg=f"step {t + 1}, leaf {name}",
            )
    assert ours_state.names == ("factored_second_moment", "clip_by_block_rms")
    for x, y in zip(jax.tree.leaves(ours_state[0]), jax.tree.leaves(ref_state[0][0])):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    # The fused step lays out the clip's state as the unfused one does (optax's EmptyState).
    assert type(ours_state[1]) is type(ref_state[1]) is gc.EmptyState


def _bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_stored_returns_its_value_bit_for_bit(dtype, jit):
    info = jnp.finfo(dtype)
    values = [0.0, -0.0, 1.0, -2.5, float(info.max), -float(info.max), float(info.tiny)]
    values += [float(info.eps), np.inf, -np.inf, np.nan]
    # Tiled past ORDERED_MIN_SIZE, below which stored returns x untouched.
    reps = -(-gc.numerics.ORDERED_MIN_SIZE // len(values))
    x = jnp.tile(jnp.asarray(values, dtype), reps)
    # y only orders and shapes the result: any values, of any floating dtype, change nothing.
    y = jnp.tile(
        jnp.asarray([np.nan, np.inf, -0.0, 3.0, -1e30, 0.0, 1.0, 2.0, -np.inf, 5.0, 7.0]), reps
    )
    f = jax.jit(gc.numerics.stored) if jit else gc.numerics.stored
    out = f(x, y)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(_bits(out), _bits(x))


def _state_and_reader(s, g, m, keep):
    # A new state ending in a scalar add (s + eps: one large operand), read again by an update.
    s = 0.999 * s + 0.001 * (g - m) ** 2 + 1e-16
    if keep:
        s = gc.numerics.stored(s, g)
    return s, m / (jnp.sqrt(s / 0.5) + 1e-16)


@pytest.mark.parametrize("keep", [False, True], ids=["plain", "stored"])
def test_stored_writes_a_new_state_once_where_xla_would_recompute_it(keep):
    # Without it XLA fuses s into the update's kernel too, which then reads the old s, g and m
    # again and needs a copy of the old s (its buffer is donated and written in place): 40
    # bytes per element. Stored, s is written once and read back: 28 (s, g, m in; s out; s, m
    # in; update out).
    x = jnp.ones((512, 512))
    compiled = (
        jax.jit(lambda s, g, m: _state_and_reader(s, g, m, keep), donate_argnums=(0,))
        .lower(x, x, x)
        .compile()
    )
    per_element = round(compiled.cost_analysis()["bytes accessed"] / x.size)  # + scalars
    copies = compiled.as_text().count(" copy(")
    if keep:
        assert (per_element, copies) == (28, 0)
    else:  # the behaviour stored is for: if XLA stops recomputing, this test is stale
        assert (per_element, copies) == (40, 1)


def test_adabelief_writes_its_second_moment_once():
    # optax's AdaBelief adds eps_root to the stored second moment: XLA recomputes that moment in
    # the update's kernel from a copy of the old one (56 bytes per parameter on a donated step).
    # gradchain's writes it once (numerics.stored) and reads it back: AdamW's 40 plus a read of
    # the new first moment, which the second moment's kernel needs.
    ours = traffic(gc.adabelief(1e-3), gc.apply_updates)
    assert ours <= traffic(gc.adamw(1e-3), gc.apply_updates) + 4 + SLACK
    assert ours <= traffic(optax.adabelief(1e-3), optax.apply_updates) - 12 + SLACK


def _matrix_copies(tx, apply_updates) -> int:
    """Copies XLA makes of a (256, 256) array in one compiled, donated step."""
    state = tx.init(PARAMS)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return apply_updates(p, u), s

    text = jax.jit(step, donate_argnums=(0, 1)).lower(PARAMS, state, PARAMS).compile().as_text()
    return len(re.findall(r"= f32\[256,256\]\{1,0\} copy\(", text))


# State arrays that a step reads in one kernel and overwrites in place in another: ordered by
# numerics.after / numerics.stored, XLA needs no copy of the old value. optax's step, the same
# arithmetic without that order, copies (the third number). ACProp's update reads the old
# second moment after the new one is due, which only the parameters' kernel could order.
ORDERED_STATES = {
    "adabelief": (lambda: gc.adabelief(1e-3), lambda: optax.adabelief(1e-3), 0),
    "adan": (lambda: gc.adan(1e-3), lambda: optax.adan(1e-3), 0),
    "acprop": (lambda: gc.contrib.acprop(1e-3), lambda: optax.contrib.acprop(1e-3), 1),
    "dadapt_adamw": (gc.contrib.dadapt_adamw, optax.contrib.dadapt_adamw, 0),
    "mars": (lambda: gc.contrib.mars(1e-3), None, 0),
    "adopt": (lambda: gc.contrib.adopt(1e-3), lambda: optax.contrib.adopt(1e-3), 0),
}


@pytest.mark.parametrize("name", ORDERED_STATES)
def test_a_state_overwritten_in_place_is_not_copied_first(name):
    build, build_optax, expected = ORDERED_STATES[name]
    assert _matrix_copies(build(), gc.apply_updates) == expected
    if build_optax is not None:
        assert _matrix_copies(build_optax(), optax.apply_updates) > expected


@pytest.mark.parametrize("nesterov", [False, True])
def test_adabelief_equals_optax_bit_for_bit_over_jitted_steps(nesterov):
    # stored() changes where XLA keeps the second moment, not a value: 20 donated, jitted steps
    # give optax's parameters and states exactly (the gradients come from a separate program,
    # so that no fusion with them can move a rounding).
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (256, 300)), "b": jnp.ones(7)}
    grad = jax.jit(
        lambda p, k: jax.tree.map(lambda x: jax.random.normal(k, x.shape) * 0.1 + 0.01 * x, p)
    )

    def run(tx, apply_updates):
        step = jax.jit(
            lambda p, s, g: (lambda u, s: (apply_updates(p, u), s))(*tx.update(g, s, p)),
            donate_argnums=(0, 1),
        )
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for i in range(20):
            p, s = step(p, s, grad(p, jax.random.PRNGKey(i)))
        return jax.tree.leaves((p, s))

    ours = run(gc.adabelief(1e-2, nesterov=nesterov), gc.apply_updates)
    theirs = run(optax.adabelief(1e-2, nesterov=nesterov), optax.apply_updates)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
