"""Every optimizer reduces the loss on a shared matrix of problems within a step budget.

One parameterized test: optimizers x problems. Each optimizer gets one learning rate per problem
(optimizers differ in their natural scale: a sign-based step moves every coordinate by the
learning rate, an Adam step by about the learning rate, an SGD step by lr times the gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

# -- problems ------------------------------------------------------------------------------------


def _quadratic():
    """A badly conditioned quadratic: curvatures from 1 to 1000 (condition number 1e3)."""
    h = jnp.logspace(0, 3, 12)

    def loss(p):
        return 0.5 * jnp.sum(h * p["x"] ** 2)

    return loss, {"x": jnp.ones(12)}


def _rosenbrock():
    def loss(p):
        x, y = p["xy"][0], p["xy"][1]
        return (1 - x) ** 2 + 100.0 * (y - x**2) ** 2

    return loss, {"xy": jnp.array([-1.2, 1.0])}


def _mlp():
    """A two-layer tanh network fitting a fixed smooth target on 128 points."""
    kx, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (128, 4))
    y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5, 1.5]))[:, None]
    params = {
        "w1": jax.random.normal(k1, (4, 32)) / 2.0,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 1)) / jnp.sqrt(32.0),
        "b2": jnp.zeros(1),
    }

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"][None])
        return jnp.mean((h @ p["w2"] + p["b2"][None] - y) ** 2)

    return loss, params


PROBLEMS = {"quadratic": _quadratic, "rosenbrock": _rosenbrock, "mlp": _mlp}
STEPS = 300
# Success: the final loss is below this fraction of the initial loss.
TARGET = {"quadratic": 0.05, "rosenbrock": 0.2, "mlp": 0.5}

# -- optimizers: name -> factory(learning-rate scale per problem) --------------------------------

OPTIMIZERS = {
    "sgd": lambda lr: gc.sgd(lr),
    "sgd_momentum": lambda lr: gc.sgd(lr, momentum=0.9),
    "sgd_nesterov": lambda lr: gc.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: gc.adam(lr),
    "adamw": lambda lr: gc.adamw(lr, weight_decay=1e-4),
    "clip_adamw": lambda lr: gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(lr)),
    "rmsprop": lambda lr: gc.rmsprop(lr),
    "adafactor": lambda lr: gc.adafactor(lr, min_dim_size_to_factor=4),
    "nadam": lambda lr: gc.nadam(lr),
    "nadamw": lambda lr: gc.nadamw(lr),
    "radam": lambda lr: gc.radam(lr),
    "amsgrad": lambda lr: gc.amsgrad(lr),
    "adamax": lambda lr: gc.adamax(lr),
    "adamaxw": lambda lr: gc.adamaxw(lr),
    "adagrad": lambda lr: gc.adagrad(lr),
    "lion": lambda lr: gc.lion(lr),
    "lamb": lambda lr: gc.lamb(lr),
    "lars": lambda lr: gc.lars(lr),
    "sophia": lambda lr: gc.sophia(lr),
    "prodigy": lambda lr: gc.prodigy(lr),
    "dadapt_adamw": lambda lr: gc.dadapt_adamw(lr),
    "schedule_free_adamw": lambda lr: gc.schedule_free_adamw(lr),
    "schedule_free_sgd": lambda lr: gc.schedule_free_sgd(lr),
    "muon": lambda lr: gc.muon(lr, param_labels=gc.muon_labels),
    "sign_sgd": lambda lr: gc.sign_sgd(lr),
    "signum": lambda lr: gc.signum(lr),
    "noisy_sgd": lambda lr: gc.noisy_sgd(lr, key=0),
    "adabelief": lambda lr: gc.adabelief(lr),
    "yogi": lambda lr: gc.yogi(lr),
    "adadelta": lambda lr: gc.adadelta(lr),
    "adan": lambda lr: gc.adan(lr),
    "novograd": lambda lr: gc.novograd(lr),
    "fromage": lambda lr: gc.fromage(lr),
    "rprop": lambda lr: gc.rprop(lr),
    "sm3": lambda lr: gc.sm3(lr),
    "optimistic_gradient_descent": lambda lr: gc.optimistic_gradient_descent(lr),
    "optimistic_adam": lambda lr: gc.optimistic_adam(lr),
    "optimistic_adam_v2": lambda lr: gc.optimistic_adam_v2(lr),
    "polyak_sgd": lambda lr: gc.polyak_sgd(max_learning_rate=lr),
    "ademamix": lambda lr: gc.ademamix(lr),
    "ademamix_warmup": lambda lr: gc.ademamix(lr, alpha_warmup=STEPS, b3_warmup=STEPS),
    # b1 = 0.99 (the default) makes a momentum of 100 undamped gradients, which rings on the
    # condition-1e3 quadratic within 300 steps; 0.9 is the paper's short-run setting.
    "simplified_ademamix": lambda lr: gc.simplified_ademamix(lr, b1=0.9),
    "adopt": lambda lr: gc.adopt(lr),
    "cautious_adamw": lambda lr: gc.cautious_adamw(lr),
    "cautious_lion": lambda lr: gc.cautious_lion(lr),
    "mars": lambda lr: gc.mars(lr),
    "soap": lambda lr: gc.soap(lr),
    "kron": lambda lr: gc.kron(lr),
    "lbfgs": lambda lr: gc.lbfgs(lr),
    "acprop": lambda lr: gc.acprop(lr),
    "cocob": lambda lr: gc.cocob(lr),
    "dog": lambda lr: gc.dog(lr),
    "dowg": lambda lr: gc.dowg(lr),
    "madgrad": lambda lr: gc.madgrad(lr),
    "momo": lambda lr: gc.momo(lr),
    "momo_adam": lambda lr: gc.momo_adam(lr),
    "mechanize": lambda lr: gc.mechanize(gc.adam(lr)),
    # Transparent SAM spends every other update on the adversarial step: 150 outer steps.
    "sam": lambda lr: gc.sam(gc.sgd(lr, momentum=0.9), gc.chain(gc.normalize(), gc.sgd(0.01))),
}

# Learning rates: per optimizer family and problem.
SGD_LR = {"quadratic": 1.5e-3, "rosenbrock": 1.5e-3, "mlp": 0.3}
ADAM_LR = {"quadratic": 0.05, "rosenbrock": 0.05, "mlp": 0.02}
LEARNING_RATES = {
    "sgd": SGD_LR,
    "sgd_momentum": {"quadratic": 1e-3, "rosenbrock": 2e-4, "mlp": 0.1},
    "sgd_nesterov": {"quadratic": 1e-3, "rosenbrock": 2e-4, "mlp": 0.1},
    "adam": ADAM_LR,
    "adamw": ADAM_LR,
    "clip_adamw": ADAM_LR,
    "rmsprop": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 3e-3},
    "adafactor": {"quadratic": 0.1, "rosenbrock": 0.1, "mlp": 0.1},
    "nadam": ADAM_LR,
    "nadamw": ADAM_LR,
    "radam": {"quadratic": 3e-3, "rosenbrock": 1e-3, "mlp": 0.05},
    "amsgrad": {"quadratic": 0.05, "rosenbrock": 0.3, "mlp": 0.03},
    "adamax": {"quadratic": 0.05, "rosenbrock": 0.3, "mlp": 0.03},
    "adamaxw": {"quadratic": 0.05, "rosenbrock": 0.3, "mlp": 0.03},
    "adagrad": {"quadratic": 0.1, "rosenbrock": 1.0, "mlp": 0.1},
    "lion": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 3e-3},
    "lamb": {"quadratic": 0.05, "rosenbrock": 0.03, "mlp": 0.01},
    "lars": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "sophia": {"quadratic": 0.01, "rosenbrock": 0.03, "mlp": 0.01},
    "prodigy": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "dadapt_adamw": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "schedule_free_adamw": {"quadratic": 0.05, "rosenbrock": 0.05, "mlp": 0.02},
    "schedule_free_sgd": {"quadratic": 1e-3, "rosenbrock": 2e-4, "mlp": 0.3},
    "muon": {"quadratic": 0.05, "rosenbrock": 0.05, "mlp": 0.02},
    "sign_sgd": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 3e-3},
    "signum": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 3e-3},
    "noisy_sgd": SGD_LR,
    "adabelief": ADAM_LR,
    "yogi": ADAM_LR,
    "adadelta": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "adan": ADAM_LR,
    "novograd": ADAM_LR,
    "fromage": {"quadratic": 0.05, "rosenbrock": 0.05, "mlp": 0.02},
    "rprop": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 0.01},
    "sm3": {"quadratic": 0.1, "rosenbrock": 0.1, "mlp": 0.1},
    # The optimistic step is up to 3x the plain one ((1 + beta) g - beta g_prev).
    "optimistic_gradient_descent": {"quadratic": 5e-4, "rosenbrock": 5e-4, "mlp": 0.1},
    "optimistic_adam": ADAM_LR,
    "optimistic_adam_v2": ADAM_LR,
    "polyak_sgd": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "ademamix": ADAM_LR,
    "ademamix_warmup": {"quadratic": 3e-3, "rosenbrock": 0.03, "mlp": 0.01},
    # The momentum is a sum of about 1/(1 - b1) = 10 gradients: the step is 10x Adam's.
    "simplified_ademamix": {"quadratic": 3e-3, "rosenbrock": 3e-3, "mlp": 3e-3},
    "adopt": ADAM_LR,
    "cautious_adamw": ADAM_LR,
    "cautious_lion": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 3e-3},
    "mars": ADAM_LR,
    "soap": ADAM_LR,
    # PSGD's preconditioner starts at the identity and learns by at most 10% a step: the first
    # steps are SGD with momentum, which Rosenbrock's gradient of 200 at the start throws off.
    "kron": {"quadratic": 0.01, "rosenbrock": 1e-3, "mlp": 0.01},
    # The line search picks the step; the learning rate only scales the direction it starts from.
    "lbfgs": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    # ACProp's step is the raw gradient over the spread of its residuals, small on a
    # deterministic quadratic: its curvature-1000 direction needs a small rate.
    "acprop": {"quadratic": 1e-3, "rosenbrock": 0.01, "mlp": 0.01},
    # Learning-rate free: the rate is a multiplier (COCOB's scales the gradients it bets on).
    "cocob": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "dog": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "dowg": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "madgrad": {"quadratic": 0.01, "rosenbrock": 0.01, "mlp": 0.01},
    # MoMo's rate caps the Polyak step (the loss minimum is 0, momo's default lower bound).
    "momo": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
    "momo_adam": {"quadratic": 0.1, "rosenbrock": 0.1, "mlp": 0.1},
    "sam": {"quadratic": 1e-3, "rosenbrock": 1e-3, "mlp": 0.1},
    # Mechanic learns the scale: the base learning rate is 1, as its authors advise.
    "mechanize": {"quadratic": 1.0, "rosenbrock": 1.0, "mlp": 1.0},
}

# The extra ``update`` arguments, from the loss, its value and gradient: the loss for Polyak's
# step and Sophia's estimator by default; the line search's value, gradient and loss for L-BFGS.
EXTRA_ARGS = {
    "lbfgs": lambda loss, value, grad: {"value": value, "grad": grad, "value_fn": loss},
}


def _default_extra_args(loss, value, grad):
    return {"value": value, "obj_fn": loss}


def _final_loss(tx, loss, params, extra_args=_default_extra_args):
    state = tx.init(params)

    def body(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, **extra_args(loss, value, g))
        return (gc.apply_updates(p, u), s), None

    (p, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=STEPS))((params, state))
    return loss(p), state


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_reduces_the_loss(name, problem):
    loss, params = PROBLEMS[problem]()
    tx = OPTIMIZERS[name](LEARNING_RATES[name][problem])
    final, _ = _final_loss(tx, loss, params, EXTRA_ARGS.get(name, _default_extra_args))
    initial = loss(params)
    assert np.isfinite(final)
    assert final < TARGET[problem] * initial, f"{name} on {problem}: {initial} -> {final}"
