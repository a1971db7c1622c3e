"""The contract runs what training and evaluation will run, and each refusal's fix works.

A conv decoder written the natural way for one datapoint per row reads the batch size where the
particles stand: two particles of two datapoints pass by coincidence, the evaluation's K do not.
``fit`` refuses it before the first step, in one line naming the problem and the fix. Then every
refusal that :func:`~pyro_vae.contract.check_model` and :func:`~pyro_vae.objectives.check_objective`
can give is provoked, its suggested fix applied, and the model checked again: accepted.
"""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae import ConfigError, ImageData, check_model, fit, make_objective
from pyro_vae.importance import importance_traces
from pyro_vae.objectives import OBJECTIVES, check_objective
from pyro_vae.step import TrainingStep

DIM, N = 64, 40


class ConvVAE(nn.Module):
    """z ~ N(0, I); x ~ Bernoulli(deconv(z)) of 8 x 8 images. With ``batch_view`` the decoder's output is
    viewed as ``(len(x), -1, 64)``: right without particles and for K = B, wrong for any other K."""

    def __init__(self, batch_view: bool):
        super().__init__()
        self.batch_view = batch_view
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 4, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 4))
        self.fc, self.deconv = nn.Linear(2, 2 * 4 * 4), nn.ConvTranspose2d(2, 1, 4, 2, 1)

    def x_logits(self, z, batch_size):
        pixels = self.deconv(self.fc(z).view(-1, 2, 4, 4))
        return pixels.view(batch_size, -1, DIM).squeeze(1) if self.batch_view else pixels.view(z.shape[:-1] + (DIM,))

    def model(self, x, num_data=None):
        pyro.module("vae", self)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.x_logits(z, len(x))).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("vae", self)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            loc, log_scale = self.encoder(x.view(-1, 1, 8, 8)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_decoder_that_breaks_in_evaluation_is_refused_before_training(tmp_path, monkeypatch):
    torch.manual_seed(0)
    data = ImageData("small", torch.rand(N, DIM).round(), torch.rand(10, DIM).round(), (8, 8))
    module = ConvVAE(batch_view=True)
    importance_traces(module.model, module.guide, 2, data.train[:2])  # K = B = 2: the coincidence
    steps = []
    monkeypatch.setattr(TrainingStep, "__call__", lambda self, batches: steps.append(1) or (torch.tensor(0.0),
                                                                                          torch.tensor(True)))
    settings = dict(objective="meanfield", compile="eager", epochs=1, batch_size=10, eval_particles=7, device="cpu",
                    progress=False)
    with pytest.raises(ConfigError) as error:
        fit(module, data, out=tmp_path / "broken", **settings)
    said = re.escape("ConvVAE failed in evaluation (pyro_vae.evaluation.log_likelihood, which draws vectorized "
                     "particles per datapoint): ValueError: Shape mismatch inside plate('data') at site x dim -1, 2 vs ")
    assert re.match(said + r"\d+;", str(error.value))
    assert str(error.value).endswith("shapes that broadcast over leading dimensions") and "\n" not in str(error.value)
    assert steps == [] and not (tmp_path / "broken" / "config.json").exists()
    fit(ConvVAE(batch_view=False), data, out=tmp_path / "fixed", **settings)  # the fix the message names
    assert steps


# ---- every refusal, and its fix -------------------------------------------------------------------------

class Tiny(nn.Module):
    """A small VAE whose ``fault`` breaks one point of the contract; ``Tiny()`` breaks none."""

    def __init__(self, fault: str = "", **declared):
        super().__init__()
        self.fault, self.net = fault, nn.Linear(DIM, 2)
        self.__dict__.update(declared)  # mean_field_guide, reparameterized_guide

    def plate(self, x, num_data):
        size = len(x) if self.fault == "ignores num_data" else (num_data or len(x))
        return pyro.plate("data", size, subsample=torch.arange(len(x)))

    def prior(self, x):
        if self.fault == "mixture prior":
            mixing = dist.Categorical(logits=x.new_zeros(2))
            return dist.MixtureSameFamily(mixing, dist.Normal(x.new_tensor([-1.0, 1.0]), 1.0))
        return dist.Normal(x.new_zeros(()), 1.0)

    def model(self, x, num_data=None):
        pyro.module("tiny", self)
        y = 0.0
        if self.fault in ("global latent", "global enumeration"):
            infer = {"enumerate": "parallel"} if self.fault == "global enumeration" else {}
            y = pyro.sample("w", dist.Bernoulli(x.new_tensor(0.5)), infer=infer)
        with self.plate(x, num_data):
            if self.fault in ("model enumeration", "enumerated beta"):
                with poutine.scale(scale=0.5 if self.fault == "enumerated beta" else 1.0):
                    y = pyro.sample("y", dist.Bernoulli(x.new_tensor(0.5)), infer={"enumerate": "parallel"})
            if self.fault in ("discrete", "discrete declared"):
                y = pyro.sample("y", dist.Bernoulli(x.new_tensor(0.5)))
            with poutine.scale(scale=0.5 if self.fault == "beta" else 1.0):
                z = pyro.sample("z", self.prior(x))
            if self.fault == "extra model latent":
                pyro.sample("u", dist.Normal(x.new_zeros(()), 1.0))
            if self.fault == "observed guide latent":
                pyro.sample("v", dist.Normal(x.new_zeros(()), 1.0), obs=x[..., 0])
            loc = (z + y).unsqueeze(-1).expand((z + y).shape + (DIM,))
            if self.fault == "breaks broadcasting":
                loc = loc.reshape(len(x), DIM)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        pyro.module("tiny", self)
        if self.fault == "global latent":
            pyro.sample("w", dist.Bernoulli(x.new_tensor(0.5)))
        with self.plate(x, num_data):
            out = self.net(x)
            loc, log_scale = (out if self.fault == "bf16 network" else out.float()).unbind(-1)
            if self.fault == "nan guide":
                loc = loc * float("nan")
            if self.fault in ("discrete", "discrete declared"):
                pyro.sample("y", dist.Bernoulli(logits=loc))
            with poutine.scale(scale=0.5 if self.fault == "beta" else 1.0):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()))
            if self.fault in ("extra guide latent", "observed guide latent"):
                pyro.sample("v", dist.Normal(loc, 1.0))


class NoNumData(Tiny):
    def model(self, x):
        super().model(x)


X = torch.rand(2, DIM)


def check(module, objective="trace", **keywords):
    """The contract's check of ``module`` with ``objective``, as the engine runs it."""
    check_model(module, (X,), objective, make_objective(objective) if objective in OBJECTIVES else None, N,
                eval_particles=3, **keywords)


def suggested_objectives(message):
    """The objectives a refusal suggests: the names of :data:`OBJECTIVES` after its last 'objective '."""
    return [word for word in re.findall(r"[\w.\-]+", message.rsplit("objective ", 1)[-1]) if word in OBJECTIVES]


def allowing_mc_kl(module):
    with pytest.warns(RuntimeWarning, match="as allow_mc_kl allows"):
        check(module, "meanfield", allow_mc_kl=True)


SUGGESTED = "the objectives the message suggests, each with the same model"
#: ``(what breaks, the refused check, what its message says, the fixes)``. The check is ``(module, objective,
#: keywords)`` of :func:`check` or a call; a fix is ``SUGGESTED`` or a check of the model changed as the message says.
REFUSALS = [
    ("unknown objective", (Tiny(), "elbo", {}), "unknown objective 'elbo': choose one of",
     [lambda: check(Tiny(), "trace")]),
    ("a class", lambda: check_objective("trace", Tiny), "pass an instance of it",
     [lambda: check_objective("trace", Tiny())]),
    ("no model or guide", lambda: check_objective("trace", Tiny().net), "pass the object whose model and guide",
     [lambda: check_objective("trace", Tiny())]),
    ("no method", (Tiny().net, "trace", {}), "Linear has no model method", [lambda: check(Tiny())]),
    ("declared not mean-field", (Tiny(mean_field_guide=False), "meanfield", {}),
     "assumes a mean-field guide", SUGGESTED),
    ("declared discrete", (Tiny("discrete declared", reparameterized_guide=False), "iwae", {}),
     "has discrete latent variables", SUGGESTED),
    ("discrete", (Tiny("discrete"), "dreg", {}), "is not reparameterized", SUGGESTED),
    ("no num_data", (NoNumData(), "trace", {}), "add num_data=None", [lambda: check(Tiny())]),
    ("ignores num_data", (Tiny("ignores num_data"), "trace", {}), "sample it inside pyro.plate('data', num_data",
     [lambda: check(Tiny())]),
    ("extra guide latent", (Tiny("extra guide latent"), "trace", {}), "or remove it from the guide",
     [lambda: check(Tiny())]),
    ("observed guide latent", (Tiny("observed guide latent"), "trace", {}), "either latent (in both) or observed",
     [lambda: check(Tiny())]),
    ("extra model latent", (Tiny("extra model latent"), "trace", {}), "add pyro.sample('u', ...) to the guide",
     [lambda: check(Tiny())]),
    ("model enumeration", (Tiny("model enumeration"), "meanfield", {}), "use --objective enum", SUGGESTED),
    ("global latent", (Tiny("global latent"), "rws", {}), "which the rws objective cannot weigh",
     SUGGESTED),
    ("global enumeration", (Tiny("global enumeration"), "enum", {}),
     "enumerate it in the data plate itself, or sample it in the guide",
     [lambda: check(Tiny("model enumeration"), "enum"), lambda: check(Tiny("global latent"), "enum")]),
    ("enumerated beta", (Tiny("enumerated beta"), "stl", {}), "remove its poutine.scale",
     [lambda: check(Tiny("model enumeration"), "stl")]),
    ("mixture prior", (Tiny("mixture prior"), "meanfield", {}), "use --objective trace, or --allow-mc-kl",
     [SUGGESTED, lambda: allowing_mc_kl(Tiny("mixture prior"))]),
    ("beta weighed", (Tiny("beta"), "iwae", {}), "or remove the poutine.scale",
     [SUGGESTED, lambda: check(Tiny(), "iwae")]),
    ("breaks broadcasting", (Tiny("breaks broadcasting"), "trace", {}), "shapes that broadcast over leading",
     [lambda: check(Tiny())]),
    ("bf16 network", (Tiny("bf16 network"), "trace", {"precision": "bf16"}), "return float32",
     [lambda: check(Tiny(), precision="bf16")]),
    ("nan guide", (Tiny("nan guide"), "trace", {}), "Tiny.guide failed on a batch of 2: ValueError: Expected "
     "parameter loc", [lambda: check(Tiny())]),
]


@pytest.mark.parametrize("refused, says, fixes", [row[1:] for row in REFUSALS], ids=[row[0] for row in REFUSALS])
def test_each_refusal_names_a_fix_that_works(refused, says, fixes):
    with pytest.raises(ConfigError) as error:
        refused() if callable(refused) else check(refused[0], refused[1], **refused[2])
    message = str(error.value)
    assert says in message and "\n" not in message and not message.endswith((":", ",", " ")), message
    assert len(re.findall(r"\buse ", message)) <= 1, f"one fix, not two: {message}"
    for fix in fixes if isinstance(fixes, list) else [fixes]:
        if fix is not SUGGESTED:
            fix()
            continue
        module, _, keywords = refused
        assert suggested_objectives(message), message
        for name in suggested_objectives(message):
            check(module, name, **keywords)
