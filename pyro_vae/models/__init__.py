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

Every model is a :class:`VAE` or a subclass: a :class:`~pyro.nn.PyroModule` whose ``model``
and ``guide`` methods are Pyro programs over one data plate. A new latent variable is a
subclass with its networks in ``__init__`` and one ``pyro.sample`` statement in each of
``model`` and ``guide`` (see ``docs/adding_a_latent_variable.md``); registering a builder in
:data:`MODELS` makes it trainable from the command line.
"""

from typing import Callable, Optional, Sequence

from ..errors import ConfigError
from .conditional import CONDITIONS, ConditionalVAE, build_conditional_vae
from .hierarchical import HierarchicalVAE, build_hierarchical_vae
from .semisupervised import SemiSupervisedVAE, build_semisupervised_vae
from .stacked import StackedSemiSupervisedVAE, build_stacked_vae
from .vae import VAE, build_vae


def _vae(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, **_) -> VAE:
    return build_vae(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std)


def _hierarchical(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, **_) -> VAE:
    return build_hierarchical_vae(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std)


def _m2(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, num_classes=10, aux_weight=0.0,
        **_) -> VAE:
    return build_semisupervised_vae(data_dim, latent_dim, hidden_dims, num_classes, likelihood, activation,
                                    init_std, aux_weight)


def _m1m2(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, m1=None, num_classes=10,
          aux_weight=0.0, **_) -> VAE:
    if m1 is None:
        raise ConfigError("model m1m2 needs m1, a trained 'vae' model (from the command line: --m1 RUN_DIR)")
    return build_stacked_vae(m1, latent_dim, hidden_dims, num_classes, activation, init_std, aux_weight)


def _cvae(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, condition="label",
          num_classes=10, image_shape=(28, 28), **_) -> VAE:
    return build_conditional_vae(data_dim, latent_dim, hidden_dims, condition, num_classes, image_shape,
                                 likelihood, activation, init_std)


#: ``name -> builder(data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, **options)``.
#: Options a model does not use are ignored: ``num_classes``, ``aux_weight`` (m2, m1m2), ``m1`` (m1m2:
#: the trained VAE), ``condition`` and ``image_shape`` (cvae).
MODELS: dict[str, Callable[..., VAE]] = {"vae": _vae, "hierarchical": _hierarchical, "m2": _m2, "m1m2": _m1m2,
                                         "cvae": _cvae}


def build_model(name: str, data_dim: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str = "bernoulli",
                activation: str = "tanh", init_std: Optional[float] = None, **options) -> VAE:
    """The model called ``name`` (a key of :data:`MODELS`)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](data_dim, latent_dim, hidden_dims, likelihood, activation, init_std, **options)


__all__ = ["CONDITIONS", "MODELS", "VAE", "ConditionalVAE", "HierarchicalVAE", "SemiSupervisedVAE",
           "StackedSemiSupervisedVAE", "build_conditional_vae", "build_hierarchical_vae", "build_model",
           "build_semisupervised_vae", "build_stacked_vae", "build_vae"]
