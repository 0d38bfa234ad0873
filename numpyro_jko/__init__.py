"""numpyro_jko: importance-corrected neural JKO sampling for NumPyro.

Functional core: :mod:`numpyro_jko.jko` (``fit`` / ``sample`` / ``log_prob``) and
:mod:`numpyro_jko.evidence` (``log_evidence``).
"""

from numpyro_jko import cnf, evidence, jko, metrics, rejection, targets
from numpyro_jko._version import __version__
from numpyro_jko.diagnostics import JKOWarning
from numpyro_jko.evidence import log_evidence
from numpyro_jko.infer import JKOSampler, NeuralJKO
from numpyro_jko.inference_data import to_inference_data
from numpyro_jko.jko import JKOConfig
from numpyro_jko.target import ModelTarget, model_target

__all__ = [
    "__version__",
    "JKOConfig",
    "JKOSampler",
    "JKOWarning",
    "ModelTarget",
    "NeuralJKO",
    "cnf",
    "evidence",
    "jko",
    "log_evidence",
    "metrics",
    "model_target",
    "rejection",
    "targets",
    "to_inference_data",
]
