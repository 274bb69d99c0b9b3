"""Checkpoints: every optimizer state round-trips through numpy and orbax, and training resumes
in a fresh process bit for bit."""

import dataclasses
import inspect
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import resume_driver
from crosscheck import mixed_params
from training import bits_equal

import gradchain as gc


def _matrices_only(params):
    """The 2-D leaves of ``params``: the tree for transformations that accept only matrices."""
    return {k: p for k, p in params.items() if p.ndim == 2}


# Transformations that reject part of the mixed tree by design (Muon orthogonalises matrices and
# raises naming a non-matrix leaf): they are checkpointed with the part they accept.
PARAMS_FOR = {"scale_by_muon": _matrices_only, "scale_by_shape": _matrices_only}


def _named_optimizers() -> dict:
    """Every public named optimizer (a function whose first argument is the learning rate and
    whose others have defaults) and every transformation class constructible with no arguments,
    found in ``gc.__all__`` so that new ones are covered when they land. ``PARAMS_FOR`` gives
    the params of those that accept only some leaves."""
    found = {}
    for name in gc.__all__:
        obj = getattr(gc, name)
        if inspect.isfunction(obj):
            args = list(inspect.signature(obj).parameters.values())
            if (
                args
                and args[0].name == "learning_rate"
                and all(a.default is not a.empty or a.kind is a.VAR_KEYWORD for a in args[1:])
            ):
                found[name] = lambda f=obj, w=PARAMS_FOR.get(name): (f(1e-3), w)
        elif (
            isinstance(obj, type)
            and issubclass(obj, gc.GradientTransformation)
            and dataclasses.is_dataclass(obj)
            and all(
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                for f in dataclasses.fields(obj)
            )
        ):
            found[name] = lambda c=obj, w=PARAMS_FOR.get(name): (c(), w)
    return found


def _combinators() -> dict:
    mask = {"scalar": False, "vector": True, "matrix": True, "tensor": False, "bf16": True}
    labels = {k: ("adam" if on else "sgd") for k, on in mask.items()}
    return {
        "chain_clip_adamw": lambda: (gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3)), None),
        "masked": lambda: (gc.masked(gc.adamw(1e-3), mask), None),
        "freeze": lambda: (gc.chain(gc.freeze(mask), gc.sgd(0.1, momentum=0.9)), None),
        "partition": lambda: (
            gc.partition({"adam": gc.adam(1e-3), "sgd": gc.sgd(0.1, momentum=0.9)}, labels),
            None,
        ),
        "selective_transform": lambda: (
            gc.selective_transform(gc.adam(1e-3), freeze_mask=mask),
            None,
        ),
        "apply_if_finite": lambda: (gc.apply_if_finite(gc.adamw(1e-3), 3), None),
        "MultiSteps": lambda: (
            gc.MultiSteps(gc.adamw(1e-3), 4, should_skip_update_fn=gc.skip_not_finite),
            None,
        ),
        "params_ema": lambda: (gc.chain(gc.adamw(1e-3), gc.params_ema(0.999)), None),
        "lookahead": lambda: (gc.lookahead(gc.adam(1e-3), 5, 0.5), gc.LookaheadParams.init_synced),
        "zero_nans": lambda: (gc.chain(gc.zero_nans(), gc.sgd(0.1)), None),
        # Required arguments beyond the learning rate: not found by the search above. The state
        # holds the noise key (uint32) beside the momentum.
        "dpsgd": lambda: (gc.dpsgd(1e-3, 1.0, 1.0, seed=0, momentum=0.9), None),
        # Every matrix factored: the state holds row and column factors (and None entries).
        "adafactor_factored": lambda: (gc.adafactor(1e-3, min_dim_size_to_factor=1), None),
    }


OPTIMIZERS = {**_named_optimizers(), **_combinators()}


def test_the_library_search_finds_the_named_optimizers():
    assert {"adam", "adamw", "sgd", "scale_by_adam"} <= set(OPTIMIZERS)
    assert set(PARAMS_FOR) <= set(OPTIMIZERS)  # a renamed transformation is not lost


def _state(build):
    tx, wrap = build()
    params = mixed_params()
    params = wrap(params) if wrap else params
    return tx, params, _randomized(tx.init(params))


def _randomized(state):
    """``state`` with every leaf replaced by random values of its shape and dtype, so that a
    round trip cannot pass by restoring the zeros of a fresh state."""
    rng = np.random.default_rng(0)

    def leaf(x):
        dtype = jnp.dtype(x.dtype)
        if jnp.issubdtype(dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(x.shape).astype(np.float32)).astype(dtype)
        if dtype == jnp.bool_:
            return jnp.asarray(rng.random(x.shape) < 0.5)
        return jnp.asarray(rng.integers(0, 1000, x.shape)).astype(dtype)

    return jax.tree.map(leaf, state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_state_round_trips_through_numpy(name, tmp_path):
    tx, params, state = _state(OPTIMIZERS[name])
    gc.save_state(tmp_path / "state.npz", state)
    restored = gc.restore_state(tmp_path / "state.npz", like=jax.eval_shape(tx.init, params))
    assert bits_equal(restored, state)
    assert type(restored) is type(state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_state_round_trips_through_orbax(name, tmp_path):
    # Saved as a training program saves it, beside the parameters: orbax refuses a bare state
    # without leaves (the EmptyState of a stateless transformation, as optax's).
    tx, params, state = _state(OPTIMIZERS[name])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    like = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    restored = checkpointer.restore(tmp_path / "state", like)
    assert bits_equal(restored["opt_state"], state)


def test_restoring_into_another_optimizers_state_names_the_difference(tmp_path):
    params = {"w": jnp.ones(3)}
    gc.save_state(tmp_path / "adam.npz", gc.adam(1e-3).init(params))
    with pytest.raises(ValueError, match=r"holds a state of 3 arrays, the template has 1"):
        gc.restore_state(tmp_path / "adam.npz", like=gc.sgd(0.1, momentum=0.9).init(params))
    with pytest.raises(
        ValueError, match=r"state.*\['w'\].* is float32\[3\], the template has float32\[4\]"
    ):
        gc.restore_state(tmp_path / "adam.npz", like=gc.adam(1e-3).init({"w": jnp.ones(4)}))


def test_bfloat16_leaves_come_back_as_bfloat16(tmp_path):
    tree = {"w": jnp.arange(5, dtype=jnp.bfloat16) / 3}
    gc.save_state(tmp_path / "bf16.npz", tree)
    restored = gc.restore_state(tmp_path / "bf16.npz", like=tree)
    assert restored["w"].dtype == jnp.bfloat16 and bits_equal(restored, tree)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Trains every resume_driver optimizer 50 steps, checkpoints it, trains on to 100 steps
    here, and resumes all of them from the checkpoints in one fresh process."""
    directory = tmp_path_factory.mktemp("resume")
    params = resume_driver.init_params()
    uninterrupted = {}
    checkpointer = ocp.StandardCheckpointer()
    for name, tx in resume_driver.optimizers().items():
        train = resume_driver.make_train(tx)
        half_p, half_s = train(params, tx.init(params), 0)
        where = resume_driver.paths(directory, name)
        gc.save_state(where["params"], half_p)
        gc.save_state(where["state"], half_s)
        checkpointer.save(where["orbax"], {"params": half_p, "state": half_s})
        checkpointer.wait_until_finished()
        uninterrupted[name] = (half_p, train(half_p, half_s, resume_driver.HALF))

    root = os.path.dirname(os.path.dirname(gc.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.path.dirname(__file__)])}
    subprocess.run(
        [sys.executable, resume_driver.__file__, str(directory), *uninterrupted],
        env=env,
        check=True,
        timeout=600,
    )
    return directory, uninterrupted


@pytest.mark.parametrize("name", list(resume_driver.optimizers()))
def test_resuming_in_a_fresh_process_is_bit_identical_to_uninterrupted_training(name, resumed):
    directory, uninterrupted = resumed
    half_p, (full_p, full_s) = uninterrupted[name]
    where = resume_driver.paths(directory, name)
    for how in ("final_numpy", "final_orbax"):
        resumed_run = gc.restore_state(where[how], like={"params": full_p, "state": full_s})
        assert bits_equal(resumed_run["params"], full_p), how
        assert bits_equal(resumed_run["state"], full_s), how
    assert not bits_equal(half_p, full_p)  # the second half did train


def test_save_state_writes_orbax_when_asked_and_restores_it(tmp_path):
    tx = gc.adamw(1e-2)
    state = tx.init({"w": jnp.ones((3, 2))})
    gc.save_state(tmp_path / "ckpt", state, format="orbax")
    assert (tmp_path / "ckpt").is_dir()
    restored = gc.restore_state(tmp_path / "ckpt", jax.eval_shape(tx.init, {"w": jnp.ones((3, 2))}))
    assert bits_equal(restored, state)


def test_save_state_without_orbax_names_it_and_shows_the_call(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match=r"orbax-checkpoint(.|\n)*StandardCheckpointer\(\)\.save"):
        gc.save_state(tmp_path / "ckpt", {"a": jnp.ones(2)}, format="orbax")


def test_save_state_names_a_wrong_format(tmp_path):
    with pytest.raises(ValueError, match="format must be"):
        gc.save_state(tmp_path / "x", {"a": jnp.ones(2)}, format="pickle")
