"""Named optimizers: thin chains of the atomic transformations, with optax's signatures."""

from __future__ import annotations

from gradchain.adaptive import scale_by_adam
from gradchain.base import Chain, named_chain
from gradchain.decay import add_decoupled_weight_decay
from gradchain.momentum import trace
from gradchain.scaling import scale_by_learning_rate

__all__ = ["adam", "adamw", "sgd"]


def sgd(learning_rate, momentum=None, nesterov=False, accumulator_dtype=None) -> Chain:
    r"""Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum.

    ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``:
    :math:`b_t = g_t + \mu b_{t-1}`, :math:`p_t = p_{t-1} - \eta_{t-1} b_t` (Nesterov:
    :math:`g_t + \mu b_t`). Same as ``optax.sgd`` and ``torch.optim.SGD`` without dampening.
    """
    parts = []
    if momentum is not None:
        parts.append(trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype))
    parts.append(scale_by_learning_rate(learning_rate))
    config = dict(
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=nesterov,
        accumulator_dtype=accumulator_dtype,
    )
    return named_chain("sgd", config, *parts)


def adam(
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    mu_dtype=None,
    *,
    nesterov=False,
    nu_dtype=None,
) -> Chain:
    r"""Adam: ``chain(scale_by_adam(...), scale_by_learning_rate(learning_rate))``.

    :math:`p_t = p_{t-1} - \eta_{t-1}\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`;
    see :func:`scale_by_adam` for the moments. Same as ``optax.adam`` and ``torch.optim.Adam``
    (whose ``weight_decay`` is the coupled L2 penalty: ``chain(add_l2_penalty(wd), adam(...))``).
    """
    config = dict(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
        mu_dtype=mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype,
    )
    return named_chain(
        "adam",
        config,
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    mu_dtype=None,
    weight_decay=1e-4,
    mask=None,
    *,
    nesterov=False,
    nu_dtype=None,
) -> Chain:
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
    config = dict(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
        mu_dtype=mu_dtype, weight_decay=weight_decay, mask=mask, nesterov=nesterov,
        nu_dtype=nu_dtype,
    )
    return named_chain(
        "adamw",
        config,
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
