"""NumPyro test models with their data and, where they exist, exact answers.

Shared by ``tests/test_numpyro_integration.py``, ``tests/data/make_mixed_reference.py``
and ``benchmarks/bimodal_vs_nuts.py``.
"""

import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

# ----------------------------------------------------------------------------------
# Conjugate normal: mu ~ N(0, 10^2), y_i ~ N(mu, 1).

CONJ_PRIOR_SD = 10.0
CONJ_Y = np.array(
    [3.18, 2.55, 3.64, 3.1, 2.38, 3.29, 4.31, 2.89, 2.95, 3.52], dtype=np.float32
)


def conjugate_normal(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, CONJ_PRIOR_SD))
    numpyro.deterministic("mu_squared", mu**2)
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def conjugate_normal_exact(y=CONJ_Y):
    """Posterior mean and sd of ``mu``, and ``log Z`` (float64, closed form)."""
    y = np.asarray(y, np.float64)
    n = y.size
    precision = 1.0 / CONJ_PRIOR_SD**2 + n
    mean, sd = y.sum() / precision, precision**-0.5
    cov = np.eye(n) + CONJ_PRIOR_SD**2 * np.ones((n, n))
    _, logdet = np.linalg.slogdet(cov)
    log_z = -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y))
    return mean, sd, log_z


# ----------------------------------------------------------------------------------
# Bounded supports: HalfNormal, LogNormal and Dirichlet sites, one deterministic.

MIXED_Y = np.array(
    [1.9, 2.7, 1.1, 2.2, 3.0, 1.6, 2.4, 2.0, 1.3, 2.8, 2.1, 1.8], dtype=np.float32
)


def mixed_supports(y):
    scale = numpyro.sample("scale", dist.HalfNormal(2.0))
    rate = numpyro.sample("rate", dist.LogNormal(0.0, 0.5))
    p = numpyro.sample("p", dist.Dirichlet(jnp.array([2.0, 2.0, 2.0])))
    numpyro.deterministic("product", scale * rate)
    loc = 3.0 * p[0] + rate * p[1]
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)


# ----------------------------------------------------------------------------------
# Eight schools, non-centred.

SCHOOLS_J = 8
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=np.float32)
SCHOOLS_SIGMA = np.array(
    [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=np.float32
)


def eight_schools(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", J):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * eta)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


# ----------------------------------------------------------------------------------
# Bimodal: y ~ N(x^2, s) leaves the sign of x open; the prior on x breaks the
# symmetry (mode weights about 0.62 / 0.38).  The valley at x = 0 is ~e^-24 deep, so
# a NUTS chain stays in the mode it starts in.

BIMODAL_Y = np.array([3.9, 4.3, 4.0], dtype=np.float32)


def bimodal(y):
    x = numpyro.sample("x", dist.Normal(0.5, 2.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.3))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(x**2, s), obs=y)


def bimodal_exact(y=BIMODAL_Y, num_x=40001, num_log_s=1201):
    """``P(x > 0 | y)`` and ``log Z`` by quadrature (float64).

    Riemann sums on a uniform grid in ``x`` (width 1/4000 against a posterior sd
    ~0.15) and in ``log s`` (the Jacobian ``s`` included); both integrands vanish
    at the ends of the grids, and halving either grid changes neither result in
    the 6th digit.
    """
    y = np.asarray(y, np.float64)
    x = np.linspace(-5.0, 5.0, num_x)
    log_s = np.linspace(-2.5, 2.5, num_log_s)
    dx, du = x[1] - x[0], log_s[1] - log_s[0]

    def log_normal_pdf(v, loc, scale):
        return (
            -0.5 * ((v - loc) / scale) ** 2
            - np.log(scale)
            - 0.5 * math.log(2 * math.pi)
        )

    s = np.exp(log_s)[None, :]
    log_prior = (
        log_normal_pdf(x, 0.5, 2.0)[:, None] + log_normal_pdf(log_s, 0.0, 0.3)[None, :]
    )
    # LogNormal density in s is N(log s) / s; times ds = s du, the 1/s cancels.
    log_lik = sum(log_normal_pdf(yi, x[:, None] ** 2, s) for yi in y)
    log_f = log_prior + log_lik
    top = log_f.max()
    f = np.exp(log_f - top)
    total = f.sum() * dx * du
    positive = f[x > 0].sum() * dx * du
    return positive / total, float(top + np.log(total))
