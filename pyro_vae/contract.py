"""The model contract: what the engine needs of a model, checked on one tiny batch before training.

The contract (``docs/model_contract.md`` explains each point):

1. ``module.model`` and ``module.guide`` are Pyro programs taking the batch (the images, and the
   labels for a model whose ``labels`` are ``"all"`` or, for labelled batches, ``"some"``) and the
   keyword ``num_data=None``.
2. Every sample site of the batch sits inside the data plate, a :class:`pyro.plate` of size
   ``num_data`` that subsamples the batch (``pyro.plate("data", num_data, subsample=...)``), so that
   Pyro scales a minibatch's log-densities to the whole training set (the paper's equation 8). A
   site outside every plate of the batch (a global latent, as in the paper's Appendix F) is
   counted once; the objectives that weigh each datapoint's particles apart refuse it
   (:attr:`~pyro_vae.objectives.Objective.handles_global_latents`).
3. Model and guide have the same latent sites: every sample site of the guide is sampled (not
   observed) in the model, and every latent site of the model is sampled in the guide, but for a
   discrete site of the model marked ``infer={"enumerate": "parallel"}`` inside the data plate,
   which the objectives that can (:attr:`~pyro_vae.objectives.Objective.handles_model_enumeration`,
   ``enum`` first) and the evaluation sum out.
4. With K > 1 particles the objectives, and always the importance-sampled log p(x), run model and
   guide once, vectorized, with an extra batch dimension left of the plates
   (``max_plate_nesting = 1``): plates use ``dim=-1`` and tensors broadcast over leading dimensions.
   The check runs both evaluations on the tiny batch as training will run them
   (:func:`~pyro_vae.evaluation.elbo` and :func:`~pyro_vae.evaluation.log_likelihood` with the
   run's particles and precision), so a model that evaluation would break is refused before training.
5. ``stl`` and ``dreg`` need a fully reparameterized guide (``has_rsample`` at every site); every
   objective but ``trace``, ``tracegraph`` and ``enum`` does.
6. With ``precision="bf16"`` every site's log-density is float32: networks return float32
   (:mod:`pyro_vae.precision`), so that only their matrix products run in bfloat16.
7. ``meanfield`` is exact when every latent site has a closed-form KL(q || p) (Pyro's
   :func:`~pyro.distributions.kl_divergence`); for a prior without one (a mixture, a VampPrior)
   Pyro's ``TraceMeanField_ELBO`` silently falls back to a Monte-Carlo estimate. That is refused
   unless the user allows it (``allow_mc_kl``, ``--allow-mc-kl``), then warned about.

:func:`check_model` runs model and guide once on two datapoints, with Pyro's validation on, and
refuses a violation with one line naming the site and the fix; an error of the user's program is
reported by its first line, never cut mid-sentence.
"""

import warnings
from typing import Optional

import pyro
from pyro import poutine
from torch.distributions import kl_divergence
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

from . import evaluation
from .errors import ConfigError, first_line
from .objectives import OBJECTIVES, check_objective, suitable
from .precision import autocast
from .recipes import declared


PARTICLE_HINT = (" with K particles model and guide get an extra batch dimension left of the data plate: use dim=-1 "
                 "for the plate and shapes that broadcast over leading dimensions")


def _sample_sites(trace) -> dict:
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _latent_sites(trace) -> dict:
    return {name: site for name, site in _sample_sites(trace).items() if not site["is_observed"]}


def check_model(module: nn.Module, args: tuple, objective_name: str, objective: Optional[ELBO], num_data: int,
                allow_mc_kl: bool = False, precision: str = "fp32", eval_particles: Optional[int] = None) -> None:
    """Refuse, with one line naming the site and the fix, a model that breaks the contract above.

    :param args: the arguments of model and guide for a tiny batch (two datapoints).
    :param objective: the objective to run once on that batch (with its particles); ``None`` to skip.
    :param num_data: the training set's size, passed as ``num_data``.
    :param precision: the training's precision; with ``"bf16"`` model and guide also run under autocast.
    :param eval_particles: K of the run's log p(x) (``None``: :func:`~pyro_vae.evaluation.log_likelihood`'s default).
    """
    name = type(module).__name__
    for method in ("model", "guide"):
        if not callable(getattr(module, method, None)):
            raise ConfigError(f"{name} has no {method} method: a model for pyro-vae is a torch.nn.Module whose "
                              "model and guide methods are Pyro programs (see docs/model_contract.md)")
        names, takes_any = declared(getattr(module, method))
        if "num_data" not in names and not takes_any:
            raise ConfigError(f"{name}.{method} does not take the keyword num_data: add num_data=None and pass it "
                              "to the data plate, pyro.plate('data', num_data, subsample=...)")
    check_objective(objective_name, module)
    batch_size = len(args[0])
    with pyro.get_param_store().scope(), pyro.validation_enabled(True):
        try:
            guide = poutine.trace(module.guide).get_trace(*args, num_data=num_data)
        except Exception as error:  # noqa: BLE001 - any failure of the user's program, said in one line
            raise ConfigError(f"{name}.guide failed on a batch of {batch_size}: {_said(error)}") from None
        try:
            model = poutine.trace(poutine.replay(module.model, trace=guide)).get_trace(*args, num_data=num_data)
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"{name}.model failed on a batch of {batch_size} with the guide's draws: "
                              f"{_said(error)}") from None
        _check_sites(name, objective_name, model, guide, num_data, batch_size)
        _check_global_sites(name, module, objective_name, model, guide, num_data)
        _check_objective_assumptions(name, module, objective_name, model, guide, allow_mc_kl)
        _check_evaluation(name, module, args, precision, eval_particles)
        if precision != "fp32":
            _check_log_density_dtypes(name, module, args, num_data, precision)
        if objective is not None and not objective_name.startswith("jit"):
            try:
                objective.differentiable_loss(module.model, module.guide, *args, num_data=num_data)
            except ConfigError:  # a refusal of the objective's own, with its fix
                raise
            except Exception as error:  # noqa: BLE001
                particles = getattr(objective, "num_particles", 1)
                raise ConfigError(f"the {objective_name} objective failed on {name} (K = {particles}): "
                                  f"{_said(error)};"
                                  f"{PARTICLE_HINT if particles > 1 else ' see docs/model_contract.md'}") from None


def _said(error: Exception) -> str:
    """An error of the user's program in one line: its type and first line, without a colon that
    announced lines left out."""
    return f"{type(error).__name__}: {first_line(error).rstrip().rstrip(':')}"


def _check_evaluation(name: str, module: nn.Module, args: tuple, precision: str, eval_particles: Optional[int]) -> None:
    """Run the ELBO and log p(x) of the batch as training evaluates them (the same functions and keywords)."""
    particles = {} if eval_particles is None else {"num_particles": eval_particles}
    for figure, keywords in ((evaluation.elbo, {}), (evaluation.log_likelihood, particles)):
        try:
            figure(module.model, module.guide, args, precision=precision, **keywords)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"{name} failed in evaluation (pyro_vae.evaluation.{figure.__name__}, which draws "
                              f"vectorized particles per datapoint): {_said(error)};{PARTICLE_HINT}") from None


def _check_sites(name: str, objective_name: str, model, guide, num_data: int, batch_size: int) -> None:
    model_latent, guide_latent = _latent_sites(model), _latent_sites(guide)
    for site in guide_latent:
        if site not in _sample_sites(model):
            raise ConfigError(f"site {site!r} is sampled in {name}.guide but not in the model: add "
                              f"pyro.sample({site!r}, ...) to the model, or remove it from the guide")
        if site not in model_latent:
            raise ConfigError(f"site {site!r} is sampled in {name}.guide but observed in the model: a site is "
                              "either latent (in both) or observed (in the model only)")
    for site in model_latent:
        if site not in guide_latent and model_latent[site]["infer"].get("enumerate") == "parallel":
            if not OBJECTIVES[objective_name].handles_model_enumeration:
                raise ConfigError(f"site {site!r} of {name}.model is enumerated there (not in the guide), which the "
                                  f"{objective_name} objective cannot sum out: use --objective enum")
        elif site not in guide_latent:
            raise ConfigError(f"site {site!r} is a latent variable of {name}.model with no counterpart in the guide: "
                              f"add pyro.sample({site!r}, ...) to the guide")
    for program, trace in (("model", model), ("guide", guide)):
        for site_name, site in _sample_sites(trace).items():
            sizes = [frame.full_size or frame.size for frame in site["cond_indep_stack"] if frame.vectorized]
            if batch_size in sizes and num_data not in sizes:  # a plate of the batch, not of the data set
                raise ConfigError(f"site {site_name!r} of {name}.{program} is in plates of sizes {sizes}, not in the "
                                  f"data plate of size num_data = {num_data}: sample it inside pyro.plate('data', "
                                  "num_data, subsample=...) so that a minibatch is scaled to the data set")


def _check_global_sites(name: str, module: nn.Module, objective_name: str, model, guide, num_data: int) -> None:
    """Refuse a site outside the data plate (a global latent) for an objective that cannot weigh it."""
    if OBJECTIVES[objective_name].handles_global_latents:
        return
    for program, trace in (("model", model), ("guide", guide)):
        for site_name, site in _sample_sites(trace).items():
            if not any((frame.full_size or frame.size) == num_data for frame in site["cond_indep_stack"]):
                raise ConfigError(f"site {site_name!r} of {name}.{program} is outside the data plate (a global "
                                  f"latent variable), which the {objective_name} objective cannot weigh per "
                                  f"datapoint: use --objective {' or '.join(_taking(module, model, guide, True)[:3])}")


def _taking(module: nn.Module, model, guide, global_latents: bool = False) -> list[str]:
    """The objectives that suit ``module``'s declarations (:func:`~pyro_vae.objectives.suitable`) and take what
    its traces hold: discrete guide sites, sites enumerated in the model."""
    discrete = any(not getattr(site["fn"], "has_rsample", False) for site in _latent_sites(guide).values())
    enumerated = any(site["infer"].get("enumerate") == "parallel" and name not in guide
                     for name, site in _latent_sites(model).items())
    return [name for name in suitable(module, global_latents)
            if not (discrete and OBJECTIVES[name].needs_reparameterized_guide)
            and not (enumerated and not OBJECTIVES[name].handles_model_enumeration)]


def _check_log_density_dtypes(name: str, module: nn.Module, args: tuple, num_data: int, precision: str) -> None:
    with autocast(precision, args[0].device):
        guide = poutine.trace(module.guide).get_trace(*args, num_data=num_data)
        model = poutine.trace(poutine.replay(module.model, trace=guide)).get_trace(*args, num_data=num_data)
        for program, trace in (("model", model), ("guide", guide)):
            for site_name, site in _sample_sites(trace).items():
                dtype = site["fn"].log_prob(site["value"]).dtype
                if dtype.is_floating_point and dtype.itemsize < 4:
                    raise ConfigError(f"site {site_name!r} of {name}.{program} computes its log-density in {dtype} "
                                      f"under precision {precision}: return float32 from the network that gives its "
                                      "parameters (.float()), as pyro_vae.networks.MLP does")


def _check_objective_assumptions(name: str, module: nn.Module, objective_name: str, model, guide,
                                 allow_mc_kl: bool) -> None:
    record = OBJECTIVES[objective_name]
    for site_name, site in _latent_sites(guide).items():
        if record.needs_reparameterized_guide and not getattr(site["fn"], "has_rsample", False):
            raise ConfigError(f"site {site_name!r} of {name}.guide ({type(site['fn']).__name__}) is not "
                              f"reparameterized, which the {objective_name} objective needs: use --objective "
                              f"{' or '.join(_taking(module, model, guide)[:3])}")
        if record.analytic_kl:
            prior = model.nodes[site_name]["fn"]
            try:
                kl_divergence(site["fn"], prior)
            except NotImplementedError:
                message = (f"the {objective_name} objective has no closed-form KL for site {site_name!r} "
                           f"(q: {type(site['fn']).__name__}, p: {type(prior).__name__})")
                if not allow_mc_kl:
                    raise ConfigError(f"{message} and would estimate it by Monte Carlo: use --objective trace, or "
                                      "--allow-mc-kl (allow_mc_kl=True) to accept the estimate") from None
                warnings.warn(f"{message}: it estimates it by Monte Carlo, as allow_mc_kl allows", RuntimeWarning,
                              stacklevel=4)
