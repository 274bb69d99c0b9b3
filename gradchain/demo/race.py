"""The optimizers the demo races, each built from gradchain's parts.

An entry says how to build the optimizer for a run of ``steps`` steps and, for the optimizers
that need more than gradients, what extra ``update`` arguments they take and which parameters to
evaluate. Entries whose pieces this version of gradchain does not have are not offered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

import gradchain as gc

PEAK_LR = 3e-3
WEIGHT_DECAY = 0.01


def lr_schedule(steps: int, peak: float = PEAK_LR):
    """Linear warmup over 10% of the run, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 10)
    return gc.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=max(steps, warmup + 1), end_value=0.1 * peak
    )


def decay_mask(params):
    """Weight decay on the weight matrices only: not on biases, norms, embeddings or positions.

    The blocks are stacked along a leading layer axis (``params["layers"]``), which the mask is
    told about so that a stacked bias is not mistaken for a matrix.
    """
    del params
    return gc.path_mask(exclude=r"embed|pos", min_ndim=2, stacked="layers")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    build: Callable  # (steps, params) -> GradientTransformation
    requires: tuple[str, ...] = ()
    # "obj_fn" (Hutchinson), "value" (the loss: Polyak), "per_example" (one gradient per
    # sequence, along a leading axis: DP-SGD clips each) or None
    extra: str | None = None
    eval_params: Callable | None = None  # (state, params) -> params to evaluate
    in_default_race: bool = True  # raced without --optimizers (the default stays short)

    def available(self) -> bool:
        return all(hasattr(gc, r) for r in self.requires)


def _clipped(tx):
    return gc.chain(gc.clip_by_global_norm(1.0), tx)


def _fromage(steps, params):
    """Fromage's step is relative to the parameter's norm, so a parameter that starts at zero
    (the head, the biases) would stay there: those go to AdamW."""
    labels = gc.path_labels({r"head|bias": "adam"}, default="fromage")(params)
    return _clipped(
        gc.partition(
            {"fromage": gc.fromage(lr_schedule(steps, 1e-2)), "adam": gc.adamw(lr_schedule(steps))},
            labels,
        )
    )


def _recipe(steps, params):
    return gc.chain(
        gc.clip_by_global_norm(1.0),
        gc.adamw(lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params)),
    )


def optax_recipe(steps, params):
    """The same recipe written with optax, for the parity replay."""
    import optax

    warmup = max(1, steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        PEAK_LR,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=0.1 * PEAK_LR,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=WEIGHT_DECAY, mask=decay_mask(params)),
    )


def _muon(steps, params):
    """Muon for the stacked attention and MLP matrices (one matrix per layer), AdamW elsewhere."""
    import jax

    labels = gc.path_labels({r"layers/(attn|mlp)/(qkv|proj|fc)$": "muon"}, default="adam")(params)
    dims = jax.tree.map(lambda l: gc.MuonDimensionNumbers(1, 2) if l == "muon" else None, labels)
    return gc.muon(
        lr_schedule(steps, 0.02),
        weight_decay=WEIGHT_DECAY,
        adam_learning_rate=lr_schedule(steps),
        adam_weight_decay=WEIGHT_DECAY,
        param_labels=labels,
        muon_weight_dimension_numbers=dims,
    )


ENTRIES = (
    Entry(
        "adamw",
        "clip_by_global_norm(1.0) -> AdamW, warmup + cosine (the LLM recipe)",
        _recipe,
        requires=("warmup_cosine_decay_schedule", "path_mask"),
    ),
    Entry(
        "adafactor",
        "Adafactor (factored second moment, update clipping), warmup + cosine",
        # The head starts at zero, so the relative (parameter-scaled) step would leave it frozen.
        lambda steps, params: gc.adafactor(
            lr_schedule(steps, 1e-2), min_dim_size_to_factor=32, multiply_by_parameter_scale=False
        ),
        requires=("adafactor", "warmup_cosine_decay_schedule"),
    ),
    Entry(
        "sgd",
        "SGD + Nesterov momentum 0.9, warmup + cosine",
        lambda steps, params: gc.chain(
            gc.clip_by_global_norm(1.0),
            gc.sgd(lr_schedule(steps, 0.3), momentum=0.9, nesterov=True),
        ),
        requires=("warmup_cosine_decay_schedule",),
    ),
    Entry(
        "adamw_8bit",
        "AdamW with block-wise 8-bit moments",
        lambda steps, params: gc.chain(
            gc.clip_by_global_norm(1.0),
            gc.adamw_8bit(lr_schedule(steps), weight_decay=WEIGHT_DECAY, min_8bit_size=1024),
        ),
        requires=("adamw_8bit", "warmup_cosine_decay_schedule"),
    ),
    Entry(
        "lion",
        "Lion (sign of interpolated momentum), lr / 3",
        lambda steps, params: gc.chain(
            gc.clip_by_global_norm(1.0),
            gc.lion(lr_schedule(steps, PEAK_LR / 3), weight_decay=0.1, mask=decay_mask(params)),
        ),
        requires=("lion", "warmup_cosine_decay_schedule"),
    ),
    Entry(
        "sophia",
        "Sophia with the Hutchinson Hessian estimator",
        lambda steps, params: gc.chain(
            gc.clip_by_global_norm(1.0),
            gc.sophia(lr_schedule(steps, PEAK_LR / 3), weight_decay=WEIGHT_DECAY),
        ),
        requires=("sophia", "warmup_cosine_decay_schedule"),
        extra="obj_fn",
    ),
    Entry(
        "schedule_free",
        "Schedule-Free AdamW (no decay schedule; evaluated at x)",
        lambda steps, params: gc.schedule_free_adamw(
            PEAK_LR, warmup_steps=max(1, steps // 10), weight_decay=WEIGHT_DECAY
        ),
        requires=("schedule_free_adamw", "schedule_free_eval_params"),
        eval_params=lambda state, params: gc.schedule_free_eval_params(state, params),
    ),
    Entry(
        "muon",
        "Muon on the hidden matrices, AdamW on embeddings, head, norms and biases",
        lambda steps, params: gc.chain(gc.clip_by_global_norm(1.0), _muon(steps, params)),
        requires=("muon", "path_labels", "warmup_cosine_decay_schedule"),
    ),
    Entry(
        "prodigy",
        "Prodigy (learning-rate free), cosine multiplier",
        lambda steps, params: gc.prodigy(lr_schedule(steps, 1.0)),
        requires=("prodigy", "warmup_cosine_decay_schedule"),
    ),
    *(
        Entry(
            name,
            summary,
            build,
            requires=(name, "warmup_cosine_decay_schedule"),
            extra=extra,
            in_default_race=False,
        )
        for name, summary, build, extra in (
            (
                "sign_sgd",
                "signSGD, lr / 3",
                lambda steps, params: _clipped(gc.sign_sgd(lr_schedule(steps, PEAK_LR / 3))),
                None,
            ),
            (
                "signum",
                "Signum (sign of momentum), lr / 3",
                lambda steps, params: _clipped(gc.signum(lr_schedule(steps, PEAK_LR / 3))),
                None,
            ),
            (
                "noisy_sgd",
                "SGD with annealed gradient noise",
                lambda steps, params: _clipped(gc.noisy_sgd(lr_schedule(steps, 0.3), key=0)),
                None,
            ),
            (
                "adabelief",
                "AdaBelief",
                lambda steps, params: _clipped(gc.adabelief(lr_schedule(steps))),
                None,
            ),
            ("yogi", "Yogi", lambda steps, params: _clipped(gc.yogi(lr_schedule(steps))), None),
            (
                "adadelta",
                "Adadelta, lr 1",
                lambda steps, params: _clipped(gc.adadelta(lr_schedule(steps, 1.0))),
                None,
            ),
            (
                "adan",
                "Adan with decoupled weight decay",
                lambda steps, params: _clipped(
                    gc.adan(lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params))
                ),
                None,
            ),
            (
                "novograd",
                "NovoGrad (layer-wise second moment)",
                lambda steps, params: _clipped(gc.novograd(lr_schedule(steps))),
                None,
            ),
            (
                "fromage",
                "Fromage (relative steps), lr 1e-2; AdamW on the zero-initialised head and biases",
                _fromage,
                None,
            ),
            (
                "rprop",
                "Rprop (PyTorch's immediate step)",
                lambda steps, params: _clipped(gc.rprop(1e-3, delay_step=False)),
                None,
            ),
            (
                "sm3",
                "SM3 (one accumulator per row and column), lr 0.1",
                lambda steps, params: _clipped(gc.sm3(lr_schedule(steps, 0.1))),
                None,
            ),
            (
                "optimistic_gradient_descent",
                "optimistic gradient descent",
                lambda steps, params: _clipped(
                    gc.optimistic_gradient_descent(lr_schedule(steps, 0.1))
                ),
                None,
            ),
            (
                "optimistic_adam_v2",
                "optimistic Adam",
                lambda steps, params: _clipped(gc.optimistic_adam_v2(lr_schedule(steps))),
                None,
            ),
            (
                "ademamix",
                "AdEMAMix with the authors' alpha and beta3 warmups over the run",
                lambda steps, params: _clipped(
                    gc.ademamix(
                        lr_schedule(steps),
                        b3=0.999,
                        weight_decay=WEIGHT_DECAY,
                        mask=decay_mask(params),
                        alpha_warmup=steps,
                        b3_warmup=steps,
                    )
                ),
                None,
            ),
            (
                "simplified_ademamix",
                "simplified AdEMAMix (b1 0.9, lr / 10)",
                lambda steps, params: _clipped(
                    gc.simplified_ademamix(lr_schedule(steps, PEAK_LR / 10), b1=0.9)
                ),
                None,
            ),
            (
                "adopt",
                "ADOPT with decoupled weight decay",
                lambda steps, params: _clipped(
                    gc.adopt(lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params))
                ),
                None,
            ),
            (
                "cautious_adamw",
                "Cautious AdamW (update masked where it disagrees with the gradient)",
                lambda steps, params: _clipped(
                    gc.cautious_adamw(
                        lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params)
                    )
                ),
                None,
            ),
            (
                "cautious_lion",
                "Cautious Lion, lr / 3",
                lambda steps, params: _clipped(
                    gc.cautious_lion(
                        lr_schedule(steps, PEAK_LR / 3),
                        weight_decay=WEIGHT_DECAY * 3,
                        mask=decay_mask(params),
                    )
                ),
                None,
            ),
            (
                "mars",
                "MARS-AdamW (variance-reduced gradient; Adam on vectors)",
                lambda steps, params: gc.mars(
                    lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params)
                ),
                None,
            ),
            (
                "soap",
                "SOAP (Adam in Shampoo's eigenbasis, refreshed every 10 steps)",
                lambda steps, params: _clipped(
                    gc.soap(lr_schedule(steps), weight_decay=WEIGHT_DECAY, mask=decay_mask(params))
                ),
                None,
            ),
            (
                "kron",
                "PSGD Kron (Kronecker-factored preconditioner fitted online, started at 30 I)",
                lambda steps, params: _clipped(
                    gc.kron(
                        lr_schedule(steps),
                        weight_decay=WEIGHT_DECAY,
                        weight_decay_mask=decay_mask(params),
                        preconditioner_init_scale=30.0,
                    )
                ),
                None,
            ),
            (
                "polyak_sgd",
                "SGD with the Polyak step size (f* = 0)",
                lambda steps, params: _clipped(gc.polyak_sgd(max_learning_rate=1.0)),
                "value",
            ),
            (
                "acprop",
                "ACProp (AdaBelief's second moment, applied one step late), lr / 10",
                lambda steps, params: _clipped(gc.acprop(lr_schedule(steps, PEAK_LR / 10))),
                None,
            ),
            (
                "cocob",
                "COCOB (coin betting, learning-rate free)",
                lambda steps, params: _clipped(gc.cocob()),
                None,
            ),
            (
                "dog",
                "DoG (distance over gradients, learning-rate free), cosine multiplier",
                lambda steps, params: _clipped(gc.dog(lr_schedule(steps, 1.0))),
                None,
            ),
            (
                "dowg",
                "DoWG (distance over weighted gradients), cosine multiplier",
                lambda steps, params: _clipped(gc.dowg(lr_schedule(steps, 1.0))),
                None,
            ),
            (
                "madgrad",
                "MADGRAD (momentumized dual averaging), lr 1e-2",
                lambda steps, params: _clipped(gc.madgrad(lr_schedule(steps, 1e-2))),
                None,
            ),
            (
                "momo",
                "MoMo (Polyak step of a momentum model, f* = 0), step cap 1",
                lambda steps, params: _clipped(gc.momo(lr_schedule(steps, 1.0))),
                "value",
            ),
            (
                "momo_adam",
                "MoMo-Adam, step cap 1e-2",
                lambda steps, params: _clipped(gc.momo_adam(lr_schedule(steps, 1e-2))),
                "value",
            ),
            (
                "mechanize",
                "Mechanic around Adam (learns the scale; base lr 1, cosine)",
                lambda steps, params: _clipped(gc.mechanize(gc.adam(lr_schedule(steps, 1.0)))),
                None,
            ),
            (
                "dpsgd",
                "DP-SGD: each sequence's gradient clipped to norm 1, noise multiplier 0.01 (a"
                " demonstration of the clipping's cost, not a privacy budget), momentum 0.9",
                lambda steps, params: gc.dpsgd(
                    lr_schedule(steps, 0.3), 1.0, 0.01, seed=0, momentum=0.9, nesterov=True
                ),
                "per_example",
            ),
            (
                "sam",
                "SAM around AdamW (rho 0.05; every other step is the adversarial one)",
                lambda steps, params: _clipped(
                    gc.sam(
                        gc.adamw(lr_schedule(steps), weight_decay=WEIGHT_DECAY),
                        gc.chain(gc.normalize(), gc.sgd(0.05)),
                    )
                ),
                None,
            ),
        )
    ),
)


def available() -> dict[str, Entry]:
    return {e.name: e for e in ENTRIES if e.available()}


def state_bytes_per_param(tx, params) -> float:
    """Optimizer-state bytes per parameter, from shapes alone (``jax.eval_shape``)."""
    import jax

    shapes = jax.eval_shape(tx.init, params)
    state_bytes = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))
    n = sum(x.size for x in jax.tree.leaves(params))
    return state_bytes / n
