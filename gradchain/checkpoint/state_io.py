"""Saving and restoring optimizer states.

Every gradchain state is a pytree of arrays (``ChainState`` and the state classes are registered
pytrees; hyperparameters and counters are arrays, never Python numbers), so any pytree
checkpointer saves it. Two ways, both restoring bit for bit:

* **orbax-checkpoint**, the JAX ecosystem's checkpointer (sharded, asynchronous, multi-host)::

      import orbax.checkpoint as ocp
      ckpt = ocp.StandardCheckpointer()
      ckpt.save(path, state)
      state = ckpt.restore(path, jax.eval_shape(tx.init, params))

* **numpy** ``.npz`` of the flattened tree, with :func:`save_state` and :func:`restore_state`::

      gc.save_state("opt.npz", state)
      state = gc.restore_state("opt.npz", like=tx.init(params))

The template (``like``) gives the tree structure; it can be abstract (``jax.eval_shape(tx.init,
params)``), and restored arrays are placed with its shardings where it has them.

A state spread over several processes (``jax.distributed``) cannot be read into one host's
memory: :func:`save_state` then writes it with orbax (every process calls it, each writes its
own shards, into the directory ``path``), and :func:`restore_state` reads such a directory
with orbax, straight into the shardings of its template (``gc.abstract_state(tx, params)``).
``format="orbax"`` asks for that on one process too.
"""

from __future__ import annotations

import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import PyTree

__all__ = ["restore_state", "save_state"]

_PATHS = "__paths__"
_DTYPES = "__dtypes__"


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


def _flatten(tree):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in leaves], [x for _, x in leaves], treedef


def _orbax(call: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            "a state spread over several processes is saved and restored with orbax-checkpoint "
            "(pip install orbax-checkpoint); gradchain makes the call:\n"
            f"    import orbax.checkpoint as ocp\n    {call}"
        ) from None
    return ocp


def _spans_processes(tree) -> bool:
    return any(
        isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


def _orbax_target(like):
    """The restore target: ``like`` 's leaves as ``ShapeDtypeStruct`` s with their shardings."""

    def target(x):
        sharding = getattr(x, "sharding", None)
        if not isinstance(sharding, jax.sharding.Sharding):
            sharding = None
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)

    return jax.tree.map(target, like)


def save_state(
    path: str | os.PathLike[str], state: PyTree, *, format: Literal["npz", "orbax"] | None = None
) -> None:
    """Writes ``state`` (any pytree of arrays) to ``path`` with ``numpy.savez``, or with orbax.

    Args:
      path: the ``.npz`` file, or the directory of an orbax checkpoint.
      state: the pytree to save.
      format: keyword-only. ``"npz"`` reads every array to this host; ``"orbax"`` writes each
        process's shards from where they are (``ocp.StandardCheckpointer().save(path, state,
        force=True)``; every process must call it). Default: orbax when an array spans
        devices of other processes, which no host can read whole, else npz.

    The file holds one array per leaf, in flattening order, with each leaf's tree path and
    dtype (``numpy.load`` gives bfloat16 leaves back as raw bytes; :func:`restore_state` views
    them as bfloat16 again). Without bfloat16 leaves, and without the checks of
    :func:`restore_state`, the two lines are::

        numpy.savez(path, *jax.tree.leaves(state))
        with numpy.load(path) as f:
            state = jax.tree.unflatten(jax.tree.structure(like), [f[k] for k in f.files])
    """
    if format not in (None, "npz", "orbax"):
        raise ValueError(f"format must be 'npz', 'orbax' or None, got {format!r}")
    if format == "orbax" or (format is None and _spans_processes(state)):
        ocp = _orbax("ocp.StandardCheckpointer().save(path, state, force=True)")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.abspath(os.fspath(path)), state, force=True)
        return
    paths, leaves, _ = _flatten(state)
    arrays = {_leaf_key(i): np.asarray(x) for i, x in enumerate(leaves)}
    dtypes = [str(a.dtype) for a in arrays.values()]
    arrays[_PATHS] = np.array(paths, dtype=np.str_)
    arrays[_DTYPES] = np.array(dtypes, dtype=np.str_)
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _placed(array: np.ndarray, template):
    sharding = getattr(template, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.device_put(array, sharding)
    return jnp.asarray(array)


def restore_state(path: str | os.PathLike[str], like: PyTree) -> PyTree:
    """Reads a state written by :func:`save_state`, with the structure of ``like``.

    Args:
      path: the ``.npz`` file, or an orbax checkpoint's directory (read with
        ``ocp.StandardCheckpointer().restore(path, target)``, each process reading its shards).
      like: a template state with the structure, shapes and dtypes to restore: ``tx.init(params)``
        or the abstract ``jax.eval_shape(tx.init, params)``; across processes, one that
        carries the shardings, such as ``gc.abstract_state(tx, params)``.

    Returns:
      The state, as JAX arrays placed with the template's shardings where it has them.

    Raises:
      ValueError: naming the first leaf whose path, shape or dtype differs from the template,
        or the leaf counts when they differ (a checkpoint of another optimizer or model).
    """
    if os.path.isdir(os.fspath(path)):
        ocp = _orbax("ocp.StandardCheckpointer().restore(path, gc.abstract_state(tx, params))")
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(os.path.abspath(os.fspath(path)), _orbax_target(like))
    paths, templates, treedef = _flatten(like)
    with np.load(os.fspath(path), allow_pickle=False) as f:
        saved_paths = [str(p) for p in f[_PATHS]]
        saved_dtypes = [str(d) for d in f[_DTYPES]]
        if len(saved_paths) != len(paths):
            raise ValueError(
                f"{os.fspath(path)} holds a state of {len(saved_paths)} arrays, the template has "
                f"{len(paths)}: was it saved from the same optimizer and parameters?"
            )
        leaves = []
        for i, (want, got, template) in enumerate(zip(paths, saved_paths, templates)):
            if want != got:
                raise ValueError(
                    f"leaf {i} of {os.fspath(path)} is state{got}, the template has state{want}"
                )
            array = f[_leaf_key(i)]
            dtype = jnp.dtype(saved_dtypes[i])
            if array.dtype != dtype:  # ml_dtypes (bfloat16, ...) are stored as raw bytes
                array = array.view(dtype)
            want_dtype = jnp.dtype(template.dtype)
            if array.shape != tuple(template.shape) or array.dtype != want_dtype:
                raise ValueError(
                    f"state{want} in {os.fspath(path)} is {array.dtype}{list(array.shape)}, the "
                    f"template has {want_dtype}{list(template.shape)}"
                )
            leaves.append(_placed(array, template))
    return jax.tree.unflatten(treedef, leaves)
