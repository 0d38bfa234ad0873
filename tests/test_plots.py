"""numpyro_jko.plots: every plot renders (Agg) from real fits, and errors are clear."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402

from numpyro_jko import CouplingFlowProposal, FlowMALA, jko, plots, targets  # noqa: E402

# Tiny: the plots need a record of every layer kind, not an accurate chain.
CONFIG = jko.JKOConfig(
    num_particles=512,
    num_cnf=2,
    num_blocks=1,
    rejections_per_block=2,
    num_iterations=50,
    tau0=0.02,
    tau_growth=4.0,
    min_cnf_gain=0.0,
    min_elbo_gain=1e-4,
    batch_size=128,
    hidden=8,
    num_hidden_layers=2,
    num_steps=2,
)


@pytest.fixture(scope="module")
def fit():
    target = targets.shifted_eight_modes()
    chain, info = jko.fit(
        jax.random.key(0), target.logdensity_fn, 2, CONFIG, progress_bar=False
    )
    return target, chain, info


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _render(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 1000
    return path


def test_layer_labels():
    assert plots.layer_labels(("C", "R", "C", "R")) == ["C1", "R1", "C2", "R2"]


def test_plot_training_elbo_and_kl(fit, tmp_path):
    _, _, info = fit
    fig = plots.plot_training(info)
    assert fig.axes[1].get_title().startswith("ELBO")
    # One loss line per CNF, labelled with its step size.
    _, labels = fig.axes[0].get_legend_handles_labels()
    assert labels == ["C1 (tau 0.02)", "C2 (tau 0.08)"]
    _render(fig, tmp_path, "training_elbo")

    fig = plots.plot_training(info, log_Z=0.0, target_rate=0.2)
    assert fig.axes[1].get_title().startswith("KL")
    assert fig.axes[1].get_yscale() == "log"
    # Two rejection layers: two bars.
    assert len(fig.axes[2].patches) == 2
    _render(fig, tmp_path, "training_kl")


def test_plot_training_accepts_a_trained_sampler(fit):
    _, _, info = fit

    class Trained:  # what JKOSampler / NeuralJKO expose
        def __init__(self):
            self.info = info

        def diagnostics(self):
            return {"log_Z": 0.0}

    fig = plots.plot_training(Trained())
    assert fig.axes[1].get_title().startswith("KL")
    with pytest.raises(TypeError, match="JKOInfo"):
        plots.plot_training(object())


def test_plot_layers(fit, tmp_path):
    target, chain, _ = fit
    fig = plots.plot_layers(jax.random.key(1), chain, 500)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["latent", "after C1", "after C2", "after R1", "after R2"]
    _render(fig, tmp_path, "layers")

    exact = target.sample(jax.random.key(2), 500)
    fig = plots.plot_layers(
        jax.random.key(1), chain, 500, layers=[0, 4], reference=exact, ncols=2
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["latent", "after R2", "reference"]
    # Shared, padded limits that hold the circle of modes (x1 in [-2, 0]).
    lo, hi = fig.axes[0].get_xlim()
    assert lo < -2.0 and hi > 0.0
    _render(fig, tmp_path, "layers_reference")


def test_plot_layers_errors(fit):
    _, chain, _ = fit
    with pytest.raises(ValueError, match="out of range"):
        plots.plot_layers(jax.random.key(0), chain, 10, layers=[7])
    with pytest.raises(ValueError, match="dims"):
        plots.plot_layers(jax.random.key(0), chain, 10, dims=(0, 2))


def test_plot_acceptance_from_fields(tmp_path):
    rng = np.random.default_rng(0)
    sampling = {
        "accept_prob": rng.uniform(0.4, 0.7, (4, 60)),
        "global_accept_prob": rng.uniform(0.0, 0.5, (4, 60)),
    }
    warm = dict(sampling)
    # Global moves every other iteration: NaN on the others, for every walker.
    warm["global_accept_prob"] = np.where(
        np.arange(60) % 2 == 0, sampling["global_accept_prob"], np.nan
    )
    fig = plots.plot_acceptance(sampling, warmup=warm)
    assert fig.axes[0].get_xlim()[1] >= 119
    _render(fig, tmp_path, "acceptance")

    no_global = {"accept_prob": sampling["accept_prob"]}
    no_global["global_accept_prob"] = np.full((4, 60), np.nan)
    fig = plots.plot_acceptance(no_global)  # plain MALA: no empty-slice warning
    assert "no global moves" in fig.axes[1].texts[0].get_text()
    with pytest.raises(KeyError, match="extra_fields"):
        plots.plot_acceptance({"z": np.zeros((4, 3))})


def test_plot_acceptance_from_a_flow_mala_run(tmp_path):
    kernel = FlowMALA(
        potential_fn=lambda x: 0.5 * jnp.sum(x**2),
        proposal=CouplingFlowProposal(num_layers=2, hidden=(8,)),
        global_every=2,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=40,
        num_samples=40,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    fields = ("accept_prob", "global_accept_prob")
    mcmc.warmup(
        jax.random.key(0),
        init_params=jnp.zeros((4, 2)),
        collect_warmup=True,
        extra_fields=fields,
    )
    warm = mcmc.get_extra_fields(group_by_chain=True)
    mcmc.run(jax.random.key(1), extra_fields=fields)
    fig = plots.plot_acceptance(mcmc, warmup=warm)
    _render(fig, tmp_path, "acceptance_flow_mala")
