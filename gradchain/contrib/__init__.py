"""Research optimizers, one module each, as in ``optax.contrib``."""

from gradchain.contrib.galore import (
    GaLoreDimensionNumbers,
    GaLoreState,
    galore,
    scale_by_galore,
)
from gradchain.contrib.learning_rate_free import (
    dadapt_adamw,
    prodigy,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from gradchain.contrib.muon import (
    MuonDimensionNumbers,
    muon,
    muon_labels,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
from gradchain.contrib.reduce_on_plateau import (
    ReduceLROnPlateauState,
    reduce_on_plateau,
)
from gradchain.contrib.schedule_free import (
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from gradchain.contrib.sophia import (
    HutchinsonState,
    SophiaState,
    gauss_newton_bartlett_estimator_diag_hessian,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
    sophia,
)

__all__ = [
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "HutchinsonState",
    "MuonDimensionNumbers",
    "ReduceLROnPlateauState",
    "SophiaState",
    "dadapt_adamw",
    "galore",
    "gauss_newton_bartlett_estimator_diag_hessian",
    "hutchinson_estimator_diag_hessian",
    "muon",
    "muon_labels",
    "orthogonalize_via_newton_schulz",
    "prodigy",
    "reduce_on_plateau",
    "scale_by_dadapt_adamw",
    "scale_by_galore",
    "scale_by_muon",
    "scale_by_prodigy",
    "scale_by_shape",
    "scale_by_sophia",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "sophia",
]
