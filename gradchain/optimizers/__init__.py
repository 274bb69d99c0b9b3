"""Named optimizers: thin chains of atomic transformations, one module per family."""

from gradchain.optimizers.adabelief import (
    ScaleByBeliefState,
    adabelief,
    scale_by_belief,
)
from gradchain.optimizers.adadelta import (
    ScaleByAdaDeltaState,
    adadelta,
    scale_by_adadelta,
)
from gradchain.optimizers.adagrad import (
    ScaleByRssState,
    adagrad,
    scale_by_rss,
)
from gradchain.optimizers.adam_variants import (
    ScaleByAmsgradState,
    adamax,
    adamaxw,
    amsgrad,
    nadam,
    nadamw,
    radam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradchain.optimizers.adan import (
    ScaleByAdanState,
    adan,
    scale_by_adan,
)
from gradchain.optimizers.alias import (
    adafactor,
    adam,
    adamw,
    rmsprop,
    sgd,
)
from gradchain.optimizers.lbfgs import (
    ScaleByLBFGSState,
    lbfgs,
    scale_by_lbfgs,
)
from gradchain.optimizers.lion import (
    ScaleByLionState,
    lion,
    scale_by_lion,
)
from gradchain.optimizers.novograd import (
    ScaleByNovogradState,
    novograd,
    scale_by_novograd,
)
from gradchain.optimizers.optimistic import (
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    scale_by_optimistic_gradient,
)
from gradchain.optimizers.polyak import (
    polyak_sgd,
    scale_by_polyak,
)
from gradchain.optimizers.rprop import (
    ScaleByRpropState,
    rprop,
    scale_by_rprop,
)
from gradchain.optimizers.sgd_variants import (
    noisy_sgd,
    sign_sgd,
    signum,
)
from gradchain.optimizers.sm3 import (
    ScaleBySM3State,
    scale_by_sm3,
    sm3,
)
from gradchain.optimizers.trust_ratio import (
    ScaleByTrustRatioState,
    fromage,
    lamb,
    lars,
    scale_by_trust_ratio,
)
from gradchain.optimizers.yogi import (
    scale_by_yogi,
    yogi,
)

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLBFGSState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleBySM3State",
    "ScaleByTrustRatioState",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "fromage",
    "lamb",
    "lars",
    "lbfgs",
    "lion",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rmsprop",
    "rprop",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_lbfgs",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_sm3",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "sgd",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
]
