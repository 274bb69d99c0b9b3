"""SGD's relatives: sign descent (signSGD, Signum), noisy SGD, optimistic gradient descent and
the Polyak step size."""

from __future__ import annotations

from typing import Any

import jax

from gradchain.core.base import Parts, ScalarOrSchedule, check_number, named_optimizer
from gradchain.transforms.momentum import ema
from gradchain.transforms.noise import add_noise
from gradchain.transforms.scaling import scale_by_learning_rate
from gradchain.transforms.sign import scale_by_sign

__all__ = ["noisy_sgd", "sign_sgd", "signum"]


@named_optimizer
def sign_sgd(learning_rate) -> Parts:
    r"""signSGD: :math:`p_t = p_{t-1} - \eta\, \mathrm{sign}(g_t)`.

    ``chain(scale_by_sign(), scale_by_learning_rate(learning_rate))``. Reference: Bernstein et
    al., "signSGD: Compressed Optimisation for Non-Convex Problems" (2018). Same as
    ``optax.sign_sgd``.
    """
    return (
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def signum(
    learning_rate: ScalarOrSchedule,
    beta: ScalarOrSchedule = 0.9,
    accumulator_dtype: Any | None = None,
) -> Parts:
    r"""Signum, signSGD with momentum: the sign of an exponential moving average of gradients.

    .. math:: m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad p_t = p_{t-1} - \eta\,\mathrm{sign}(m_t)

    ``chain(ema(beta, debias=False, accumulator_dtype), scale_by_sign(),
    scale_by_learning_rate(learning_rate))``: debiasing would not change the sign. The average keeps
    the parameters' dtype unless ``accumulator_dtype`` says otherwise, as optax (float32 under
    ``with_float32_state``). Reference: Bernstein et al. (2018), Algorithm 3. Same as
    ``optax.signum``.
    """
    check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    return (
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: ScalarOrSchedule = 0.01,
    gamma: ScalarOrSchedule = 0.55,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> Parts:
    r"""SGD with annealed Gaussian gradient noise:
    :math:`p_t = p_{t-1} - \eta_t (g_t + \sigma_t z_t)`, :math:`\sigma_t^2 = \text{eta}/t^{\gamma}`.

    ``chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))``; see
    :func:`add_noise`. Reference: Neelakantan et al. (2015). Same as ``optax.noisy_sgd``.
    """
    return (
        add_noise(eta, gamma, key, seed=seed),
        scale_by_learning_rate(learning_rate),
    )
