"""Bad input to the foundation's transformations fails early, naming the argument or the path."""

import jax.numpy as jnp
import pytest

import gradchain as gc


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.scale_by_rms(decay=1.0), r"decay must be in \[0, 1\), got 1.0"),
        (lambda: gc.scale_by_rms(eps=-1e-8), r"eps must be in \[0, inf\)"),
        (lambda: gc.scale_by_rms(initial_scale=-1.0), r"initial_scale must be in \[0, inf\)"),
        (
            lambda: gc.scale_by_rms(initial_scale=lambda c: 1.0),
            r"initial_scale must be a number, not a schedule",
        ),
        (lambda: gc.scale_by_rms(eps_in_sqrt="yes"), r"eps_in_sqrt must be a bool"),
        (lambda: gc.scale_by_stddev(decay=-0.1), r"decay must be in \[0, 1\)"),
        (lambda: gc.scale_by_stddev(bias_correction=1), r"bias_correction must be a bool"),
        (lambda: gc.add_l2_penalty(-0.1), r"weight_decay must be in \[0, inf\)"),
        (lambda: gc.add_l2_penalty("strong"), r"weight_decay must be a number"),
        (lambda: gc.clip(-1.0), r"max_delta must be in \[0, inf\)"),
        (lambda: gc.clip_by_block_rms(0.0), r"threshold must be in \(0, inf\)"),
        (lambda: gc.ema(1.0), r"decay must be in \[0, 1\)"),
        (lambda: gc.ema(0.9, debias=1), r"debias must be a bool"),
        (
            lambda: gc.ema(0.9, accumulator_dtype=jnp.int32),
            r"accumulator_dtype must be a floating dtype",
        ),
        (lambda: gc.factored_second_moment(decay_rate=-0.8), r"decay_rate must be in \[0, inf\)"),
        (lambda: gc.factored_second_moment(step_offset=-1), r"step_offset must be an int"),
        (
            lambda: gc.factored_second_moment(min_dim_size_to_factor=2.5),
            r"min_dim_size_to_factor must be an int in \[0, inf\), got 2.5",
        ),
        (lambda: gc.factored_second_moment(epsilon=-1.0), r"epsilon must be in \[0, inf\)"),
        (lambda: gc.factored_second_moment(decay_rate_fn=0.8), r"decay_rate_fn must be callable"),
        (
            lambda: gc.factored_second_moment(factored_axes="first"),
            r"factored_axes must be one of \('largest', 'last'\), got 'first'",
        ),
        (lambda: gc.factored_second_moment(factored="yes"), r"factored must be a bool"),
        (lambda: gc.scale_by_param_block_rms(-1e-3), r"min_scale must be in \[0, inf\)"),
        (lambda: gc.rmsprop(-0.1), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.rmsprop(0.1, decay=1.5), r"decay must be in \[0, 1\), got 1.5"),
        (lambda: gc.rmsprop(0.1, momentum=1.5), r"momentum must be in \[0, 1\], got 1.5"),
        (lambda: gc.rmsprop(0.1, eps=-1.0, centered=True), r"eps must be in \[0, inf\)"),
        (lambda: gc.adafactor(-1.0), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.adafactor(clipping_threshold=0.0), r"clipping_threshold must be in \(0, inf\)"),
        (lambda: gc.adafactor(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (
            lambda: gc.adafactor(momentum=0.9, dtype_momentum=jnp.int8),
            r"dtype_momentum must be a floating dtype",
        ),
        (lambda: gc.adafactor(weight_decay_rate=-1e-3), r"weight_decay_rate must be in \[0, inf\)"),
        (lambda: gc.adafactor(decay_offset=-5), r"decay_offset must be an int"),
        (lambda: gc.adafactor(eps=-1e-30), r"eps must be in \[0, inf\)"),
        (lambda: gc.adafactor(min_dim_size_to_factor=-1), r"min_dim_size_to_factor must be an int"),
        (
            lambda: gc.adafactor(multiply_by_parameter_scale=None),
            r"multiply_by_parameter_scale must be a bool",
        ),
    ],
)
def test_invalid_hyperparameters_raise_at_construction_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


STATEFUL = [
    pytest.param(lambda: gc.scale_by_rms(), "state.nu", id="scale_by_rms"),
    pytest.param(lambda: gc.scale_by_stddev(), "state.nu", id="scale_by_stddev"),
    pytest.param(lambda: gc.ema(0.9), "state.ema", id="ema"),
    pytest.param(lambda: gc.trace(0.9), "state.trace", id="trace"),
    pytest.param(
        lambda: gc.factored_second_moment(min_dim_size_to_factor=1),
        "state.v",
        id="factored_second_moment",
    ),
    pytest.param(lambda: gc.rmsprop(0.1, momentum=0.9), "state.nu", id="rmsprop"),
    pytest.param(lambda: gc.adafactor(0.1, min_dim_size_to_factor=1), "state.v", id="adafactor"),
]


@pytest.mark.parametrize("build, state_name", STATEFUL)
def test_updates_with_another_structure_name_the_first_differing_path(build, state_name):
    tx = build()
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    message = rf"first difference at leaf 1: updates has \['c'\], {state_name} has \['b'\]"
    with pytest.raises(ValueError, match=message):
        tx.update({"a": jnp.ones((2, 3)), "c": jnp.ones(3)}, tx.init(params), params)


@pytest.mark.parametrize("build, state_name", STATEFUL)
def test_updates_with_another_shape_name_the_path(build, state_name):
    tx = build()
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"\['a'\]"):
        tx.update({"a": jnp.ones((3, 2)), "b": jnp.ones(3)}, tx.init(params), params)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: gc.add_l2_penalty(0.1), "add_l2_penalty"),
        (lambda: gc.scale_by_param_block_rms(), "scale_by_param_block_rms"),
        (lambda: gc.adafactor(0.1), "scale_by_param_block_rms"),
        (
            lambda: gc.adafactor(0.1, multiply_by_parameter_scale=False, weight_decay_rate=0.1),
            "add_decoupled_weight_decay",
        ),
    ],
)
def test_transformations_that_need_params_say_so(build, name):
    tx = build()
    grads = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=f"{name} needs the current parameters"):
        tx.update(grads, tx.init(grads))


@pytest.mark.parametrize(
    "build",
    [gc.scale_by_rms, gc.scale_by_stddev, lambda: gc.ema(0.9), gc.factored_second_moment],
)
def test_integer_params_are_rejected_with_their_path(build):
    with pytest.raises(TypeError, match=r"parameter \['steps'\] has dtype int32"):
        build().init({"w": jnp.ones(2), "steps": jnp.zeros((), jnp.int32)})
