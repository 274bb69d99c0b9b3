"""Named optimizers: thin chains of atomic transformations, one module per family."""

from gradchain.optimizers.adagrad import (
    adagrad,
    scale_by_rss,
)
from gradchain.optimizers.adam_variants import (
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
    lion,
    scale_by_lion,
)
from gradchain.optimizers.sgd_variants import (
    noisy_sgd,
    sign_sgd,
    signum,
)
from gradchain.optimizers.trust_ratio import (
    lamb,
    lars,
    scale_by_trust_ratio,
)

__all__ = [
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
    "noisy_sgd",
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
    "sign_sgd",
    "signum",
]
