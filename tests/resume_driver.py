"""Both halves of the resume test: the training step and the fresh process that resumes.

The test trains each optimizer 50 steps, saves params and state (numpy and orbax), then runs
``python resume_driver.py CHECKPOINT_DIR NAME...`` in a new process, which restores them, trains
the next 50 steps with the same compiled program and saves the results, for the test to compare
with the 100 steps it trains without stopping.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

import gradchain as gc

HALF = 50


def adafactor():
    """``gc.adafactor`` once gradchain has it; until then optax's Adafactor algebra assembled
    from optax's parts inside a gradchain chain (the test id says which one ran)."""
    if hasattr(gc, "adafactor"):
        return gc.adafactor(1e-2, min_dim_size_to_factor=4)
    import optax

    return gc.chain(
        optax.scale_by_factored_rms(min_dim_size_to_factor=4),
        optax.clip_by_block_rms(1.0),
        optax.scale_by_param_block_rms(),
        gc.scale_by_learning_rate(1e-2),
    )


ADAFACTOR = "adafactor" if hasattr(gc, "adafactor") else "adafactor_from_optax_parts"


def optimizers() -> dict:
    return {
        "adamw": gc.adamw(1e-2, weight_decay=0.1),
        ADAFACTOR: adafactor(),
        "partition": gc.partition(
            {"decay": gc.adamw(1e-2, weight_decay=0.1), "no_decay": gc.sgd(0.05, momentum=0.9)},
            gc.path_labels({"bias": "no_decay"}, default="decay"),
        ),
        "wrapped": gc.apply_if_finite(
            gc.MultiSteps(
                gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-2), gc.params_ema(0.9)), 3
            ),
            2,
        ),
    }


def init_params():
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "hidden": {"kernel": 0.3 * jax.random.normal(k[0], (8, 16)), "bias": jnp.zeros(16)},
        "out": {"kernel": 0.3 * jax.random.normal(k[1], (16, 4)), "bias": jnp.zeros(4)},
    }


def loss(params, step):
    """Regression on a fresh batch per step, drawn from the step number."""
    kx, ky = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), step))
    x = jax.random.normal(kx, (16, 8))
    y = jnp.sin(x[:, :4]) + 0.1 * jax.random.normal(ky, (16, 4))
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"][None, :])
    return jnp.mean(jnp.square(h @ params["out"]["kernel"] + params["out"]["bias"][None, :] - y))


def make_train(tx):
    """``train(params, state, start)``: the ``HALF`` steps ``start, start + 1, ...`` in one
    jitted scan; both processes call this same function, so they run the same program."""

    @jax.jit
    def scan(params, state, start):
        def step(carry, i):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params, i), state, params)
            return (gc.apply_updates(params, updates), state), None

        steps = start + jnp.arange(HALF, dtype=jnp.int32)
        return jax.lax.scan(step, (params, state), steps)[0]

    def train(params, state, start):
        # Fresh and restored arrays are not yet committed to a device, a step's outputs are:
        # committing them first keeps one compiled program for every call.
        params, state = jax.device_put((params, state), jax.devices()[0])
        return scan(params, state, start)

    return train


def paths(directory, name):
    return {
        "params": os.path.join(directory, f"{name}-params.npz"),
        "state": os.path.join(directory, f"{name}-state.npz"),
        "orbax": os.path.join(directory, f"{name}-orbax"),
        "final_numpy": os.path.join(directory, f"{name}-final-numpy.npz"),
        "final_orbax": os.path.join(directory, f"{name}-final-orbax.npz"),
    }


def resume(directory, names) -> None:
    """Restores the named optimizers' checkpoints both ways, trains the second half, saves it."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    params = init_params()
    for name in names:
        tx = optimizers()[name]
        where = paths(directory, name)
        train = make_train(tx)
        template = jax.eval_shape(tx.init, params)
        from_numpy = (
            gc.restore_state(where["params"], like=params),
            gc.restore_state(where["state"], like=template),
        )
        from_orbax = checkpointer.restore(where["orbax"], {"params": params, "state": template})
        p, s = train(*from_numpy, HALF)
        gc.save_state(where["final_numpy"], {"params": p, "state": s})
        p, s = train(from_orbax["params"], from_orbax["state"], HALF)
        gc.save_state(where["final_orbax"], {"params": p, "state": s})


if __name__ == "__main__":
    resume(sys.argv[1], sys.argv[2:])
