"""numpyro_jko: importance-corrected neural JKO sampling for NumPyro.

Functional core: :mod:`numpyro_jko.jko` (``fit`` / ``sample`` / ``log_prob``) and
:mod:`numpyro_jko.evidence` (``log_evidence``).
"""

from numpyro_jko import (
    cnf,
    evidence,
    flow_mala,
    flows,
    jko,
    mala,
    metrics,
    rejection,
    targets,
)
from numpyro_jko._version import __version__
from numpyro_jko.evidence import log_evidence
from numpyro_jko.flow_mala import (
    CouplingFlowProposal,
    FlowMALA,
    JKOProposal,
    init_to_spread,
)
from numpyro_jko.jko import JKOConfig

__all__ = [
    "__version__",
    "CouplingFlowProposal",
    "FlowMALA",
    "JKOConfig",
    "JKOProposal",
    "cnf",
    "evidence",
    "flow_mala",
    "flows",
    "init_to_spread",
    "jko",
    "log_evidence",
    "mala",
    "metrics",
    "rejection",
    "targets",
]
