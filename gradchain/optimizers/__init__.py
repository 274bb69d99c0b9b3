"""Named optimizers: thin chains of atomic transformations, one module per family."""

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
from gradchain.optimizers.alias import (
    adafactor,
    adam,
    adamw,
    rmsprop,
    sgd,
)
from gradchain.optimizers.lion import (
    ScaleByLionState,
    lion,
    scale_by_lion,
)
from gradchain.optimizers.trust_ratio import (
    ScaleByTrustRatioState,
    lamb,
    lars,
    scale_by_trust_ratio,
)

__all__ = [
    "ScaleByAmsgradState",
    "ScaleByLionState",
    "ScaleByRssState",
    "ScaleByTrustRatioState",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "amsgrad",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "nadamw",
    "radam",
    "rmsprop",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rss",
    "scale_by_trust_ratio",
    "sgd",
]
