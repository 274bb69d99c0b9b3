"""Named optimizers: thin chains of the atomic transformations, with optax's signatures."""

from __future__ import annotations

import contextlib
from typing import Any

import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_bool,
    identity,
    named_optimizer,
)
from gradchain.transforms.adaptive import scale_by_adam, scale_by_rms, scale_by_stddev
from gradchain.transforms.clipping import clip_by_block_rms
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.factored import factored_second_moment, scale_by_param_block_rms
from gradchain.transforms.momentum import ema, trace
from gradchain.transforms.scaling import scale, scale_by_learning_rate

__all__ = ["adafactor", "adam", "adamw", "rmsprop", "sgd"]


@contextlib.contextmanager
def _argument_names(**outer_names):
    """Re-raises a part's hyperparameter error under the optimizer's name for that argument.

    ``sgd(0.1, momentum=1.5)`` builds ``trace(decay=1.5)``; the error should say ``momentum``.
    """
    try:
        yield
    except ValueError as e:
        message = str(e)
        for inner, outer in outer_names.items():
            if message.startswith(inner + " "):
                raise ValueError(outer + message[len(inner) :]) from None
        raise


@named_optimizer
def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> Parts:
    r"""Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``:
    :math:`b_t = g_t + \mu b_{t-1}`, :math:`p_t = p_{t-1} - \eta_{t-1} b_t` (Nesterov:
    :math:`g_t + \mu b_t`). Same as ``optax.sgd`` and ``torch.optim.SGD`` without dampening.

    Args:
      learning_rate: :math:`\eta \ge 0`, a float or a schedule (no default; torch's is 1e-3).
      momentum: :math:`\mu \in [0, 1]`, or None (default) for no momentum buffer.
      nesterov: Nesterov's form, default False.
      accumulator_dtype: dtype of the momentum buffer (see :class:`trace`).

    PyTorch's ``weight_decay`` is ``chain(add_l2_penalty(wd), sgd(...))``; its ``dampening`` has
    no equivalent (ALGORITHMS.md §1, §15 row 1). The learning rate is outside the buffer, as in
    torch; Sutskever et al. (2013) keep it inside, which differs under a schedule.
    """
    check_bool("nesterov", nesterov)
    parts: list[GradientTransformation] = []
    if momentum is not None:
        with _argument_names(decay="momentum"):
            parts.append(
                trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
            )
    else:
        # optax's place for the momentum: its state, (EmptyState(), ...), is optax's.
        parts.append(identity())
    parts.append(scale_by_learning_rate(learning_rate))
    return parts


@named_optimizer
def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
) -> Parts:
    r"""Adam: ``chain(scale_by_adam(...), scale_by_learning_rate(learning_rate))``.

    :math:`p_t = p_{t-1} - \eta_{t-1}\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`;
    see :func:`scale_by_adam` for the moments. Same as ``optax.adam`` and ``torch.optim.Adam``
    (whose ``weight_decay`` is the coupled L2 penalty: ``chain(add_l2_penalty(wd), adam(...))``).
    """
    return (
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
) -> Parts:
    r"""AdamW: Adam with decoupled weight decay.

    ``chain(scale_by_adam(...), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:

    .. math:: p_t = p_{t-1} - \eta_{t-1}\Big(\frac{\hat m_t}{\sqrt{\hat v_t+\epsilon_{root}}
              + \epsilon} + \lambda\, p_{t-1}\Big)

    Defaults as optax (``weight_decay=1e-4``); PyTorch's ``AdamW`` defaults to
    ``weight_decay=1e-2`` and is otherwise identical (ALGORITHMS.md §3.2, §15 row 7). The decay
    is multiplied by the full learning rate; the paper's convention multiplies it by the schedule
    multiplier only. Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).
    """
    return (
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> Parts:
    r"""RMSProp, plain or centered, with optional momentum.

    ``chain(scale_by_rms(...) or scale_by_stddev(...) if centered,
    scale_by_learning_rate(learning_rate), trace(momentum, nesterov) if momentum is not None)``:

    .. math::
        \nu_t = \rho \nu_{t-1} + (1-\rho) g_t^2, \qquad
        d_t = -\eta_{t-1}\, g_t / \sqrt{\nu_t + \epsilon}, \qquad
        b_t = d_t + \mu b_{t-1}, \quad p_t = p_{t-1} + b_t

    (``centered`` subtracts the squared running mean from :math:`\nu_t`; ``eps_in_sqrt=False``
    gives :math:`\sqrt{\nu_t} + \epsilon`; ``bias_correction`` divides the moments by
    :math:`1-\rho^t`). Same signature, defaults and result as ``optax.rmsprop``.

    PyTorch's ``RMSprop(lr, alpha, eps, momentum, centered)`` is
    ``rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=centered,
    momentum=momentum or None)``; torch's defaults are ``decay=0.99`` (``alpha``) and eps outside
    the root (ALGORITHMS.md §2, §15 rows 3-4). With momentum the learning rate is inside the
    buffer here (trace after the learning rate, as in optax and Sutskever et al.) and outside it
    in torch: the two agree for a constant learning rate only (§15 row 2). torch's
    ``weight_decay`` is ``chain(add_l2_penalty(wd), rmsprop(...))``. Reference: Tieleman &
    Hinton (2012); Graves (2013) for the centered form.
    """
    moments = scale_by_stddev if centered else scale_by_rms
    check_bool("centered", centered)
    check_bool("nesterov", nesterov)
    parts: list[GradientTransformation] = [
        moments(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
        scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        with _argument_names(decay="momentum"):
            parts.append(trace(decay=momentum, nesterov=nesterov))
    return parts


@named_optimizer
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: ScalarOrSchedule = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: ScalarOrSchedule = 1.0,
    momentum: ScalarOrSchedule | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: ScalarOrSchedule = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
    *,
    factored_axes: str = "largest",
) -> Parts:
    r"""Adafactor: a factored second moment, update clipping and a relative step size.

    A chain of, in this order (each part only where its argument is not None/False), exactly as
    ``optax.adafactor`` (ALGORITHMS.md §4.2):

    1. ``factored_second_moment(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps,
       factored_axes=...)``: :math:`u = g/\sqrt{\hat V_t}`, :math:`\hat V` factored for matrices;
    2. ``clip_by_block_rms(clipping_threshold)``: :math:`u / \max(1, \operatorname{RMS}(u)/d)`;
    3. ``scale_by_learning_rate(learning_rate, flip_sign=False)``: :math:`\times\rho_t`;
    4. ``scale_by_param_block_rms()`` if ``multiply_by_parameter_scale``:
       :math:`\times\max(\operatorname{RMS}(p), 10^{-3})`;
    5. ``ema(momentum, debias=False, accumulator_dtype=dtype_momentum)``: momentum on the
       scaled step;
    6. ``add_decayed_weights(weight_decay_rate, weight_decay_mask)``: :math:`+\lambda p`, *not*
       multiplied by the learning rate;
    7. ``scale(-1)``.

    Steps 1 and 2 run fused (:meth:`FactoredSecondMoment.fuse_next`): the RMS of the update is
    taken from the gradient and the factors, so the update is formed once, where it is applied;
    same numbers to float32 rounding, 28 bytes of memory traffic per parameter instead of 36.

    Arguments and defaults are optax's; ``factored_axes`` (keyword-only) selects which axes are
    factored, see :func:`factored_axes`. ``learning_rate=None`` means no learning-rate factor;
    the paper's relative step :math:`\rho_t = \min(10^{-2}, 1/\sqrt{t})` is
    ``learning_rate=lambda c: jnp.minimum(1e-2, 1 / jnp.sqrt(c + 1.0))``.

    Conventions elsewhere (ALGORITHMS.md §4.3-4.5, §15 rows 11-14):

    * HF transformers' ``Adafactor(lr=None, relative_step=True, scale_parameter=True,
      clip_threshold=1.0, decay_rate=-0.8, beta1=b1)`` is
      ``adafactor(learning_rate=<the relative step above>, min_dim_size_to_factor=1,
      factored_axes="last", momentum=b1)``; its weight decay is multiplied by the step size
      :math:`\alpha_t`, here it is not.
    * PyTorch's ``Adafactor(lr)`` factors the last two axes of every matrix, caps the relative
      step at ``lr`` and clamps the estimate at the dtype's eps instead of adding
      :math:`\epsilon_1`: close to ``adafactor(lambda c: jnp.minimum(lr, 1/jnp.sqrt(c + 1.0)),
      min_dim_size_to_factor=1, factored_axes="last")`` while :math:`t \le 1/lr^2`; its weight
      decay is multiplied by ``lr``.

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost"
    (2018).
    """
    check_bool("multiply_by_parameter_scale", multiply_by_parameter_scale)
    with _argument_names(step_offset="decay_offset", epsilon="eps"):
        parts: list[GradientTransformation] = [
            factored_second_moment(
                factored,
                decay_rate,
                decay_offset,
                min_dim_size_to_factor,
                eps,
                factored_axes=factored_axes,
            )
        ]
    if clipping_threshold is not None:
        with _argument_names(threshold="clipping_threshold"):
            parts.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        parts.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        with _argument_names(decay="momentum", accumulator_dtype="dtype_momentum"):
            parts.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        with _argument_names(weight_decay="weight_decay_rate"):
            parts.append(add_decoupled_weight_decay(weight_decay_rate, weight_decay_mask))
    parts.append(scale(-1))
    return parts
