"""numpyro_jko: importance-corrected neural JKO sampling for NumPyro.

Functional core: :mod:`numpyro_jko.jko` (``fit`` / ``sample`` / ``log_prob``) and
:mod:`numpyro_jko.evidence` (``log_evidence``).
"""

from numpyro_jko import (
    cnf,
    evidence,
    flows,
    jko,
    mala,
    metrics,
    models,
    rejection,
    targets,
)
from numpyro_jko._version import __version__
from numpyro_jko.evidence import log_evidence
from numpyro_jko.jko import JKOConfig

__all__ = [
    "__version__",
    "JKOConfig",
    "cnf",
    "evidence",
    "flows",
    "jko",
    "mala",
    "models",
    "log_evidence",
    "metrics",
    "rejection",
    "targets",
]
