"""Research optimizers, one module each, as in ``optax.contrib``."""

from gradchain.contrib.acprop import acprop, scale_by_acprop
from gradchain.contrib.ademamix import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    ademamix,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
    simplified_ademamix,
)
from gradchain.contrib.adopt import (
    adopt,
    scale_by_adopt,
)
from gradchain.contrib.cautious import (
    CautiousState,
    cautious,
    cautious_adamw,
    cautious_lion,
)
from gradchain.contrib.cocob import COCOBState, cocob, scale_by_cocob
from gradchain.contrib.complex_valued import (
    SplitRealAndImaginaryState,
    split_real_and_imaginary,
)
from gradchain.contrib.dog import (
    DoGState,
    DoWGState,
    ScaleByDistanceOverGradientsState,
    dog,
    dowg,
    scale_by_distance_over_gradients,
    scale_by_dog,
    scale_by_dowg,
)
from gradchain.contrib.galore import (
    GaLoreDimensionNumbers,
    GaLoreState,
    galore,
    scale_by_galore,
)
from gradchain.contrib.kron import (
    ScaleByKronState,
    kron,
    precond_update_prob_schedule,
    scale_by_kron,
)
from gradchain.contrib.learning_rate_free import (
    dadapt_adamw,
    prodigy,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from gradchain.contrib.madgrad import MadgradState, madgrad, scale_by_madgrad
from gradchain.contrib.mars import (
    ScaleByMarsState,
    mars,
    scale_by_mars,
)
from gradchain.contrib.mechanic import MechanicState, mechanize
from gradchain.contrib.momo import MomoAdamState, MomoState, momo, momo_adam
from gradchain.contrib.muon import (
    MuonDimensionNumbers,
    MuonState,
    muon,
    muon_labels,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
from gradchain.contrib.privacy import (
    DifferentiallyPrivateAggregateState,
    differentially_private_aggregate,
    dpsgd,
)
from gradchain.contrib.reduce_on_plateau import (
    ReduceLROnPlateauState,
    reduce_on_plateau,
)
from gradchain.contrib.sam import NormalizeState, SAMState, normalize, sam
from gradchain.contrib.schedule_free import (
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from gradchain.contrib.soap import (
    ScaleBySoapState,
    scale_by_soap,
    soap,
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
    "COCOBState",
    "CautiousState",
    "DifferentiallyPrivateAggregateState",
    "DoGState",
    "DoWGState",
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "HutchinsonState",
    "MadgradState",
    "MechanicState",
    "MomoAdamState",
    "MomoState",
    "MuonDimensionNumbers",
    "MuonState",
    "NormalizeState",
    "ReduceLROnPlateauState",
    "SAMState",
    "ScaleByAdemamixState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByKronState",
    "ScaleByMarsState",
    "ScaleBySimplifiedAdEMAMixState",
    "ScaleBySoapState",
    "SophiaState",
    "SplitRealAndImaginaryState",
    "acprop",
    "ademamix",
    "adopt",
    "cautious",
    "cautious_adamw",
    "cautious_lion",
    "cocob",
    "dadapt_adamw",
    "differentially_private_aggregate",
    "dog",
    "dowg",
    "dpsgd",
    "galore",
    "gauss_newton_bartlett_estimator_diag_hessian",
    "hutchinson_estimator_diag_hessian",
    "kron",
    "madgrad",
    "mars",
    "mechanize",
    "momo",
    "momo_adam",
    "muon",
    "muon_labels",
    "normalize",
    "orthogonalize_via_newton_schulz",
    "precond_update_prob_schedule",
    "prodigy",
    "reduce_on_plateau",
    "sam",
    "scale_by_acprop",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_cocob",
    "scale_by_dadapt_adamw",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_galore",
    "scale_by_kron",
    "scale_by_madgrad",
    "scale_by_mars",
    "scale_by_muon",
    "scale_by_prodigy",
    "scale_by_shape",
    "scale_by_simplified_ademamix",
    "scale_by_soap",
    "scale_by_sophia",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "simplified_ademamix",
    "soap",
    "sophia",
    "split_real_and_imaginary",
]
