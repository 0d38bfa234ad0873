import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_jko import cnf


def _random_params(spec, scale=0.1, seed=0):
    params = cnf.init_velocity(jax.random.key(seed), spec)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        a + scale * jax.random.normal(k, a.shape)
        for a, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, leaves)


def test_rk4_is_fourth_order():
    # Error of y' = -y y at t = 1 must drop ~16x when the step halves.
    term_exact = 1.0 / (1.0 + 1.0)
    import diffrax

    def solve(n):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -(y**2)),
            cnf.RK4(),
            0.0,
            1.0,
            1.0 / n,
            jnp.array(1.0, jnp.float64 if jax.config.x64_enabled else jnp.float32),
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        return abs(float(sol.ys[-1]) - term_exact)

    ratio = solve(4) / solve(8)
    assert 10 < ratio < 24


def test_exact_trace_matches_jacobian(key):
    spec = cnf.CNFSpec(dim=3, hidden=16)
    params = _random_params(spec, 0.3)
    z = jax.random.normal(key, (5, 3))
    f = lambda zz: cnf.velocity(spec, params, 0.3, zz)
    _, div = cnf.ExactTrace()(f, z, None)
    jac = jax.vmap(jax.jacfwd(lambda zi: f(zi[None])[0]))(z)
    np.testing.assert_allclose(
        div, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5, atol=1e-5
    )


def test_hutchinson_is_unbiased(key):
    spec = cnf.CNFSpec(dim=4, hidden=16)
    params = _random_params(spec, 0.3)
    z = jnp.ones((1, 4))
    f = lambda zz: cnf.velocity(spec, params, 0.5, zz)
    _, exact = cnf.ExactTrace()(f, z, None)
    num_probes = 4000
    probe = cnf.Hutchinson(1).draw_probe(key, (num_probes, 4), z.dtype)[0]
    # One-probe estimates, one per row: their mean must be within 5 standard errors.
    _, f_jvp = jax.linearize(f, jnp.broadcast_to(z, (num_probes, 4)))
    estimates = jnp.sum(probe * f_jvp(probe), axis=-1)
    se = float(jnp.std(estimates)) / np.sqrt(num_probes)
    assert abs(float(jnp.mean(estimates) - exact[0])) < 5 * se + 1e-6


@pytest.mark.parametrize("dim", [2, 10])
def test_push_forward_logdet_and_pull_back(key, dim):
    spec = cnf.CNFSpec(dim=dim, hidden=24)
    params = _random_params(spec, 0.1)
    x = jax.random.normal(key, (7, dim))
    y, logdet = jax.jit(lambda p, x: cnf.push_forward(spec, p, x))(params, x)
    jac = jax.vmap(jax.jacfwd(lambda xi: cnf._flow_map(spec, params, xi)))(x)
    np.testing.assert_allclose(logdet, jnp.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-5)
    x_back = jax.jit(lambda p, y: cnf.pull_back(spec, p, y))(params, y)
    np.testing.assert_allclose(x_back, x, atol=2e-5)


def test_fresh_layer_is_identity(key):
    spec = cnf.CNFSpec(dim=2, hidden=8)
    params = cnf.init_velocity(key, spec)
    x = jax.random.normal(key, (4, 2))
    y, logdet = cnf.push_forward(spec, params, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(logdet, 0.0)


def test_per_stage_hutchinson_is_unbiased_and_less_noisy(key):
    # Along a whole solve: the held probe and fresh probes per stage time are both
    # unbiased for the exact log-determinant, and per stage is the less noisy one
    # (its variance is about sum_s w_s^2 = 0.135 of the held one's for RK4 x 4).
    dim, reps = 8, 400
    spec = cnf.CNFSpec(dim=dim, hidden=24)
    params = _random_params(spec, 0.3)
    x = jnp.broadcast_to(jax.random.normal(key, (1, dim)), (reps, dim))
    _, exact = jax.jit(lambda p, x: cnf.push_forward(spec, p, x))(params, x[:1])
    spread = {}
    for per_stage in (False, True):
        est = cnf.Hutchinson(1, per_stage=per_stage)
        _, logdet = jax.jit(lambda p, x, k: cnf.push_forward(spec, p, x, est, k))(
            params, x, jax.random.fold_in(key, 1)
        )
        se = float(jnp.std(logdet)) / np.sqrt(reps)
        assert abs(float(jnp.mean(logdet) - exact[0])) < 5 * se + 1e-6
        spread[per_stage] = float(jnp.std(logdet))
    assert spread[True] < 0.7 * spread[False]


def test_per_stage_hutchinson_needs_the_time():
    est = cnf.Hutchinson(1, per_stage=True)
    probe = est.draw_probe(jax.random.key(0), (2, 3), jnp.float32)
    with pytest.raises(ValueError, match="stage time"):
        est(lambda z: z, jnp.ones((2, 3)), probe)
