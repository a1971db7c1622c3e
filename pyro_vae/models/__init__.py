"""Generative models and their guides, written as Pyro programs, one module per model.

=================  ==========================================  ==================================
name               model                                       module
=================  ==========================================  ==================================
``vae``            z -> x (Kingma & Welling 2013)              :mod:`pyro_vae.models.vae`
``hierarchical``   h2 -> h1 -> x (Burda et al. 2016)           :mod:`pyro_vae.models.hierarchical`
``m2``             (y, z) -> x, y partly observed (Kingma      :mod:`pyro_vae.models.semisupervised`
                   et al. 2014)
``m1m2``           M2 generating the code z1 of a trained      :mod:`pyro_vae.models.stacked`
                   ``vae`` (M1): (y, z) -> z1 -> x
``cvae``           z -> x given a label or half an image       :mod:`pyro_vae.models.conditional`
                   (Sohn et al. 2015)
=================  ==========================================  ==================================

Each name is a *factory* (below): a function of keyword arguments that builds the model, the
same public path a user's own model takes (``--model package.module:factory``,
:mod:`pyro_vae.recipes`). Factories declare the common arguments they use (``data_dim``,
``latent_dim``, ``hidden_dims``, ``activation``, ``likelihood``, ``init_std``, ``image_shape``,
``num_data``, ``num_classes``) and their own options, with the defaults of the papers.
Every model here is a :class:`VAE` or a subclass; ``docs/model_contract.md`` says what the
engine needs of any model.
"""

from typing import Optional, Sequence, Union

from ..errors import ConfigError
from ..recipes import declared
from .conditional import CONDITIONS, ConditionalVAE, build_conditional_vae
from .hierarchical import HierarchicalVAE, build_hierarchical_vae
from .semisupervised import SemiSupervisedVAE, build_semisupervised_vae
from .stacked import StackedSemiSupervisedVAE, build_stacked_vae
from .vae import VAE, build_vae


def vae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str, activation: str,
        init_std: Optional[float] = None) -> VAE:
    """The AEVB paper's VAE, z -> x (:func:`build_vae`)."""
    return build_vae(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std)


def hierarchical(data_dim: int, likelihood: str, activation: str, latent_dim: int = 100,
                 hidden_dims: Sequence[int] = (200, 200), init_std: Optional[float] = None) -> HierarchicalVAE:
    """Burda et al. (2016)'s two-layer VAE h2 -> h1 -> x: h1 of ``latent_dim``, h2 of half (trained with ``trace``)."""
    model = build_hierarchical_vae(data_dim, latent_dim, list(hidden_dims), likelihood, activation, init_std)
    model.default_objective = "trace"
    return model


def _semi_supervised(model: SemiSupervisedVAE, labels_per_class: int, labelled_weight: float) -> SemiSupervisedVAE:
    if not (isinstance(labels_per_class, int) and labels_per_class >= 1):
        raise ConfigError(f"labels_per_class must be a positive integer, got {labels_per_class!r}")
    if not (isinstance(labelled_weight, (int, float)) and labelled_weight > 0):
        raise ConfigError(f"labelled_weight must be a positive number, got {labelled_weight!r}")
    model.labels_per_class, model.labelled_weight = labels_per_class, float(labelled_weight)
    model.default_objective = "enum"
    return model


def _aux_weight(aux_weight: Optional[float], num_data: Optional[int], num_classes: int, labels_per_class: int) -> float:
    """Kingma et al.'s alpha = 0.1 N spread over the N_l labelled images, unless given."""
    if aux_weight is not None:
        if not aux_weight >= 0:
            raise ConfigError(f"aux_weight must be zero or positive, got {aux_weight!r}")
        return float(aux_weight)
    num_labelled = num_classes * labels_per_class
    return 0.1 * (num_data or num_labelled) / num_labelled


def m2(data_dim: int, likelihood: str, latent_dim: int = 50, hidden_dims: Sequence[int] = (500,),
       activation: str = "softplus", init_std: Optional[float] = None, num_classes: int = 10,
       num_data: Optional[int] = None, labels_per_class: int = 10, aux_weight: Optional[float] = None,
       labelled_weight: float = 1.0) -> SemiSupervisedVAE:
    """Kingma et al. (2014)'s semi-supervised M2, (y, z) -> x, with ``labels_per_class`` labelled images
    per class; each counts ``labelled_weight`` times in the objective; ``aux_weight`` weighs the
    classification loss per labelled image (default 0.1 N / N_labelled, their alpha = 0.1 N)."""
    aux = _aux_weight(aux_weight, num_data, num_classes, labels_per_class)
    model = build_semisupervised_vae(data_dim, latent_dim, list(hidden_dims), num_classes, likelihood, activation,
                                     init_std, aux)
    return _semi_supervised(model, labels_per_class, labelled_weight)


def m1m2(m1: Union[str, dict, VAE], latent_dim: int = 50, hidden_dims: Sequence[int] = (500,),
         activation: str = "softplus", init_std: Optional[float] = None, num_classes: int = 10,
         num_data: Optional[int] = None, labels_per_class: int = 10, aux_weight: Optional[float] = None,
         labelled_weight: float = 1.0, data_dim: Optional[int] = None) -> StackedSemiSupervisedVAE:
    """M2 stacked on a trained :class:`VAE` M1, (y, z) -> z1 -> x. ``m1`` is M1's run directory, a
    trained ``VAE``, or (when a run is rebuilt) M1's recipe, whose weights the m1m2 checkpoint holds."""
    from ..recipes import build
    from ..training import load_run

    rebuild = None
    if isinstance(m1, str):
        m1_model, _, checkpoint = load_run(m1)
        m1, rebuild = m1_model, checkpoint["recipe"]
    elif isinstance(m1, dict):
        m1, rebuild = build(m1), m1
    m1_data_dim = None if rebuild is None else rebuild["kwargs"].get("data_dim")
    if data_dim is not None and m1_data_dim is not None and m1_data_dim != data_dim:
        raise ConfigError(f"M1 was trained on images of {m1_data_dim} pixels, these have {data_dim}: "
                          "train M1 on the same data set")
    aux = _aux_weight(aux_weight, num_data, num_classes, labels_per_class)
    model = build_stacked_vae(m1, latent_dim, list(hidden_dims), num_classes, activation, init_std, aux)
    if rebuild is not None:
        model.rebuild_kwargs = {"m1": rebuild}
    return _semi_supervised(model, labels_per_class, labelled_weight)


def _check_m1(m1=None, **_) -> None:
    from pathlib import Path

    if m1 is None:
        raise ConfigError("model m1m2 needs --m1 RUN_DIR (--model-arg m1=RUN_DIR), the run directory of a "
                          "trained vae")
    if isinstance(m1, str) and not (Path(m1) / "checkpoint.pt").is_file():
        raise ConfigError(f"--m1 {m1}: no checkpoint.pt there; train M1 first with "
                          f"'pyro-vae train --model vae --out {m1}'")


m1m2.check_arguments = _check_m1


def cvae(data_dim: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str, activation: str,
         init_std: Optional[float] = None, condition: str = "label", num_classes: int = 10,
         image_shape: Sequence[int] = (28, 28)) -> ConditionalVAE:
    """Sohn et al. (2015)'s conditional VAE, z -> x given a label or the top half of the image."""
    return build_conditional_vae(data_dim, latent_dim, list(hidden_dims), condition, num_classes, tuple(image_shape),
                                 likelihood, activation, init_std)


#: The built-in factories by name.
MODELS = {"vae": vae, "hierarchical": hierarchical, "m2": m2, "m1m2": m1m2, "cvae": cvae}


def build_model(name: str, data_dim: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str = "bernoulli",
                activation: str = "tanh", init_std: Optional[float] = None, **options) -> VAE:
    """The built-in model called ``name`` (a key of :data:`MODELS`), with the arguments its factory takes."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    offered = dict(data_dim=data_dim, latent_dim=latent_dim, hidden_dims=hidden_dims, likelihood=likelihood,
                   activation=activation, init_std=init_std, **options)
    accepted, _ = declared(MODELS[name])
    return MODELS[name](**{key: value for key, value in offered.items() if key in accepted})


__all__ = ["CONDITIONS", "MODELS", "VAE", "ConditionalVAE", "HierarchicalVAE", "SemiSupervisedVAE",
           "StackedSemiSupervisedVAE", "build_conditional_vae", "build_hierarchical_vae", "build_model",
           "build_semisupervised_vae", "build_stacked_vae", "build_vae", "cvae", "hierarchical", "m1m2", "m2", "vae"]
