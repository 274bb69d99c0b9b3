"""Un-jitted steps: ``tx.update`` called outside ``jax.jit``, as in tutorials and debugging.

Outside a trace every operation is compiled on its first use and cached by its shapes, dtypes
and static parameters. A step whose programs depend on the step's values (a power of the
concrete step count emitted as an ``integer_pow`` of that exponent, a ``lax.cond`` whose
branches are new closures each step) compiles again on every call. Here every registry entry
runs 5 un-jitted steps and XLA's compile events are counted after its warm-up steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from registry import TRANSFORMS, random_tree

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: (
        _COMPILES.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
)

STEPS = 5


def _shapes(entry) -> dict[str, tuple[int, ...]]:
    if entry.matrices or entry.max_ndim is not None:
        return {"w": (4, 3), "v": (3, 2)}
    return {"w": (4, 3), "b": (3,)}


def _compiles_per_step(entry, dtype) -> list[int]:
    struct = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in _shapes(entry).items()}
    params = entry.params_arg(random_tree(struct, 0))
    tx = entry.build()
    state = tx.init(params)
    counts = []
    for k in range(STEPS):
        grads = random_tree(struct, k + 1)
        before = len(_COMPILES)
        updates, state = tx.update(
            entry.updates_arg(grads), state, params, **entry.extra_args(params)
        )
        jax.block_until_ready((updates, state))
        counts.append(len(_COMPILES) - before)
    return counts


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("entry", TRANSFORMS, ids=lambda e: e.id)
def test_unjitted_steps_compile_nothing_after_the_first(entry, dtype):
    counts = _compiles_per_step(entry, jnp.dtype(dtype))
    assert counts[entry.warm_steps :] == [0] * (STEPS - entry.warm_steps), counts
