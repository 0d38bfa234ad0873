"""Ready-made NumPyro models (radial-velocity / Keplerian orbits)."""

from numpyro_jko.models.rv import (
    RV_DATASETS,
    RVDataset,
    kepler_solve,
    keplerian_model,
    load_rv_dataset,
    rv_curve,
    true_anomaly,
)

__all__ = [
    "RV_DATASETS",
    "RVDataset",
    "kepler_solve",
    "keplerian_model",
    "load_rv_dataset",
    "rv_curve",
    "true_anomaly",
]
