"""numpyro_jko: importance-corrected neural JKO sampling for NumPyro.

User-facing: :class:`NeuralJKO` (an ``MCMCKernel``), :class:`JKOSampler` (shaped like
``NestedSampler``), :class:`FlowMALA` (an ensemble ``MCMCKernel``) and
:func:`~numpyro_jko.inference_data.to_inference_data`.  Functional core:
:mod:`numpyro_jko.jko` (``fit`` / ``sample`` / ``log_prob``), :mod:`numpyro_jko.mala`
and :mod:`numpyro_jko.evidence`.
"""

from numpyro_jko import (
    cnf,
    evidence,
    flow_mala,
    flows,
    jko,
    mala,
    metrics,
    models,
    rejection,
    targets,
)
from numpyro_jko._version import __version__
from numpyro_jko.diagnostics import JKOWarning
from numpyro_jko.evidence import log_evidence
from numpyro_jko.flow_mala import (
    CouplingFlowProposal,
    FlowMALA,
    JKOProposal,
    init_to_spread,
)
from numpyro_jko.infer import JKOSampler, NeuralJKO
from numpyro_jko.inference_data import to_inference_data
from numpyro_jko.jko import JKOConfig
from numpyro_jko.target import ModelTarget, model_target

__all__ = [
    "__version__",
    "CouplingFlowProposal",
    "FlowMALA",
    "JKOConfig",
    "JKOProposal",
    "JKOSampler",
    "JKOWarning",
    "ModelTarget",
    "NeuralJKO",
    "cnf",
    "evidence",
    "flow_mala",
    "flows",
    "init_to_spread",
    "jko",
    "log_evidence",
    "mala",
    "metrics",
    "model_target",
    "models",
    "rejection",
    "targets",
    "to_inference_data",
]
