"""Why wake-sleep does not learn on Frey Face at init std 0.01, and reweighted wake-sleep not on MNIST at
Nz = 200: measurements with the library's training.

Trains wake-sleep (``objective="wake-sleep"``) and, under the same terms, AEVB (``meanfield``)
with :func:`pyro_vae.train` (Adagrad, batch 100, weight decay 1 = the N(0, I) prior, one draw per
datapoint, the benchmark's ``make_job`` settings) and measures, at initialisation and after
training, on the test images:

* ``bound``: the test ELBO per datapoint under the model's own recognition model (one draw), the
  figure of the paper's Figure 2; ``log p(x)``: importance-sampled with K = 100 draws from q;
* ``enc spread``: the standard deviation over test images of q(z|x)'s mean, per latent dim,
  averaged over dims (0 means the encoder ignores x); ``enc scale``: q's mean standard deviation;
* ``dec std(z)``: the standard deviation over z ~ p(z) of the decoder mean, per pixel, averaged
  over pixels (0 means the decoder ignores z; the data's own pixel std is printed for scale);
* ``Δ log p(x|z)``: E_x[log p(x | z ~ q(z|x)) - log p(x | z ~ p(z))], how much more the decoder
  explains x from x's own code than from a random code (0 when either network ignores its input);
* ``dream corr`` / ``dream mse``: the sleep phase's dreams (z, x) ~ p(z) p(x|z), and q's mean at
  the dreamed x against the dreamed z: the correlation per dim averaged over dims, and the mean
  squared error (1 is what the prior mean 0 scores: the dreams tell q nothing about z);
* ``ESS``: the effective sample size 1 / sum_k w̃_k² of K = 5 self-normalised importance weights
  p(x, z_k) / q(z_k|x), averaged over test images: the weights reweighted wake-sleep trains on (1
  means one particle takes all the weight, 5 that the weights are equal);
* ``at floor``: for the Gaussian likelihood, the fraction of decoder pixel scales at z ~ q(z|x)
  within 5% of the floor ``min_scale`` (1/256), and ``dec scale`` their mean.

The grid (``--stages``):

``pilot``  Frey Face, Nz = 10: {wake-sleep, meanfield} x init std {0.01, 0.1, PyTorch default}
           x lr {0.01, 0.02, 0.1}, ``--pilot-samples`` training samples each; the step size of each
           (method, init) is the one with the best final training bound, as the paper chose it.
``long``   Frey Face, Nz = 10 and 2, the pilot's step size, ``--long-samples`` samples, measured
           at a few points along the way (training is continued with :func:`pyro_vae.resume`).
``floor``  the likelihood's variance floor 1/256 against 1/32 (wake-sleep and meanfield, both
           inits, pilot length): set by patching ``GaussianLikelihood``'s default in this process.
``seeds``  wake-sleep, Frey Face, Nz = 10, the (init std, lr) pairs of ``--seed-grid`` (default
           {0.01, 0.1} x {0.01, 0.02}), pilot length, seeds ``--seeds`` (other than the pilot's):
           whether escaping the z-ignoring state is luck.
``mnist``  MNIST, Nz = 20, 500 hidden units, ``--mnist-epochs`` epochs, wake-sleep and meanfield
           at init std 0.01 and 0.1, lr 0.02 (``--mnist-methods`` to run fewer).
``rws``    MNIST, Nz = 20 and 200, 500 hidden units, ``--rws-epochs`` epochs, reweighted wake-sleep
           (K = 5) and meanfield, init std 0.1, lr 0.01: the Figure 2 benchmark's settings.

Also printed: the bound of the best decoder that ignores z (per-pixel Gaussian / Bernoulli fitted
to the training images, evaluated on the test images, q = p(z)), the level wake-sleep is stuck at.

Every run goes to a fresh folder under ``--out`` (default: a new scratch folder under the system's
temporary directory; never ``benchmarks/results`` unless ``--out`` says so). ``--out`` gets
``diagnosis.json`` (every measurement) and ``diagnosis.md`` (the tables printed).

Example (every stage at the defaults: about 40 minutes on one unloaded CPU thread, several times
that on a loaded machine; ``docs/wake_sleep_frey_face.md`` gives the shorter commands it was run with)::

    python benchmarks/wake_sleep_diagnosis.py --data-dir ../shared/data --out /tmp/ws-diagnosis
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import TrainConfig, TrainingError, evaluation, log_importance_weights, resume, train
from pyro_vae.likelihoods import GaussianLikelihood

from pyro_vae import engine
from pyro_vae.batches import prepare

INITS = (0.01, 0.1, None)  # None: PyTorch's default initialisation
LEARNING_RATES = (0.01, 0.02, 0.1)
METHODS = ("wake-sleep", "meanfield")
DIAGNOSIS_SEED = 1234
DREAMS = 2000
PRIOR_CODES = 2000
LL_PARTICLES = 100
ESS_PARTICLES = 5  # the particles of the benchmark's rws
MNIST_POINTS = 1000  # test images the MNIST diagnostics use


def init_name(init_std):
    return "default" if init_std is None else str(init_std)


def make_config(dataset, latent_dim, hidden_dim, method, init_std, lr, epochs, out, data_dir, seed,
                eval_every=None, particles=1):
    return TrainConfig(dataset=dataset, data_dir=data_dir, latent_dim=latent_dim, hidden_dims=[hidden_dim],
                       epochs=epochs, batch_size=100, objective=method, particles=particles, optimizer="adagrad", lr=lr,
                       weight_decay=1.0, init_std=init_std, seed=seed, device="cpu",
                       eval_every=eval_every or max(1, epochs // 5), eval_particles=1, out=str(out))


def initial_model(config):
    """The model exactly as :func:`pyro_vae.train` initialises it (same seed, same draws), and its data."""
    config = config.resolved()
    model, raw, _ = engine.build(config.model, config.dataset, config)  # as pyro_vae.train builds them
    data = prepare(model, raw, config, torch.device("cpu")).data  # draws from its own generators only
    return model, data


def z_ignoring_bound(data, gaussian):
    """The test bound of the best decoder that ignores z: pixels independent, fitted to the train set."""
    mean = data.train.mean(0)  # MNIST: the grey levels are the dynamic binarization's probabilities
    if gaussian:
        scale = data.train.var(0, unbiased=False).sqrt().clamp(min=1.0 / 256)
        return torch.distributions.Normal(mean, scale).log_prob(data.test).sum(-1).mean().item()
    p = mean.clamp(1e-4, 1 - 1e-4)
    return torch.distributions.Bernoulli(probs=p).log_prob(data.test).sum(-1).mean().item()


@torch.no_grad()
def diagnose(model, data, num_points=None):
    """The measurements of the module docstring, on (the first ``num_points``) test images."""
    model.eval()
    gen = torch.Generator().manual_seed(DIAGNOSIS_SEED)
    torch.manual_seed(DIAGNOSIS_SEED)  # the bound's own draws come from the global generator
    x = data.test if num_points is None else data.test[:num_points]
    likelihood = model.likelihood
    gaussian = isinstance(likelihood, GaussianLikelihood)
    out = {}
    out["bound"] = evaluation.elbo(model.model, model.guide, (x,)).mean
    out["log_px"] = evaluation.log_likelihood(model.model, model.guide, (x,), LL_PARTICLES).mean
    weights = torch.softmax(log_importance_weights(model.model, model.guide, ESS_PARTICLES, x)[0], dim=0)
    out["ess"] = (1 / (weights ** 2).sum(0)).mean().item()
    loc, scale = model.encoder(x)
    out["enc_spread"] = loc.std(0).mean().item()
    out["enc_scale"] = scale.mean().item()
    z_prior = torch.randn(PRIOR_CODES, model.latent_dim, generator=gen)
    out["dec_std_z"] = likelihood.mean(z_prior).std(0).mean().item()
    z_q = loc + scale * torch.randn(loc.shape, generator=gen)
    z_p = torch.randn(loc.shape, generator=gen)
    out["delta_logpx"] = (likelihood(z_q).log_prob(x) - likelihood(z_p).log_prob(x)).mean().item()
    # Dreams as the sleep phase draws them: z ~ p(z), x ~ p(x|z).
    z_dream = torch.randn(DREAMS, model.latent_dim, generator=gen)
    if gaussian:
        mean, dec_scale = likelihood._loc_scale(z_dream)
        x_dream = mean + dec_scale * torch.randn(mean.shape, generator=gen)
    else:
        x_dream = torch.bernoulli(likelihood.mean(z_dream), generator=gen)
    rec, _ = model.encoder(x_dream)
    zc, rc = z_dream - z_dream.mean(0), rec - rec.mean(0)
    corr = (zc * rc).sum(0) / (zc.norm(dim=0) * rc.norm(dim=0)).clamp(min=1e-12)
    out["dream_corr"] = corr.mean().item()
    out["dream_mse"] = ((rec - z_dream) ** 2).mean().item()
    if gaussian:
        _, s = likelihood._loc_scale(z_q)
        out["dec_scale"] = s.mean().item()
        out["at_floor"] = (s < 1.05 * likelihood.min_scale).float().mean().item()
    model.train()
    return out


def run(config, checkpoints, log):
    """Train ``config`` (continuing with ``resume`` through ``checkpoints``, epoch counts) and measure
    at initialisation and at each checkpoint. Returns a record."""
    torch.set_num_threads(1)
    if Path(config.out).exists():
        raise SystemExit(f"{config.out} exists: every run needs a fresh folder")
    model, data = initial_model(config)
    points = MNIST_POINTS if config.dataset == "mnist" else None
    stages = [{"epoch": 0, "samples": 0, **diagnose(model, data, points)}]
    record = {"dataset": config.dataset, "latent_dim": config.latent_dim, "method": config.objective,
              "init_std": config.init_std, "lr": config.lr, "out": config.out, "error": None}
    start = time.perf_counter()
    try:
        for i, epochs in enumerate(checkpoints):
            if i == 0:
                config.epochs = epochs
                result = train(config, progress=False)
            else:
                result = resume(config.out, epochs=epochs, data_dir=config.data_dir, progress=False)
            last = result.history[-1]
            stages.append({"epoch": epochs, "samples": last["samples_seen"], "train_bound": last["train_elbo"],
                           **diagnose(result.model, result.data, points)})
    except TrainingError as error:  # a diverging run keeps what it measured; an interruption stops the script
        record["error"] = f"{type(error).__name__}: {error}"
    record["seconds"] = time.perf_counter() - start
    record["stages"] = stages
    record["history"] = json.loads((Path(config.out) / "history.json").read_text()) \
        if (Path(config.out) / "history.json").exists() else []
    final = stages[-1]
    log(f"  {config.dataset} Nz={config.latent_dim} {config.objective:10s} init {init_name(config.init_std):7s} "
        f"lr {config.lr}: bound {stages[0]['bound']:.1f} -> {final['bound']:.1f} at {final['samples']} samples, "
        f"enc spread {final['enc_spread']:.4f}, dream corr {final['dream_corr']:.3f} "
        f"({record['seconds']:.0f} s){'  ' + record['error'] if record['error'] else ''}")
    return record


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def table(records, with_floor=True):
    head = ("| data | Nz | method | init std | lr | samples | bound | log p(x) K=100 | enc spread | enc scale "
            "| dec std(z) | Δ log p(x\\|z) | dream corr | dream mse | ESS K=5 |" + (" dec scale | at floor |" if with_floor else ""))
    rows = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in records:
        for s in r["stages"]:
            cells = [r["dataset"], r["latent_dim"], r["method"], init_name(r["init_std"]), r["lr"],
                     f"{s['samples']:.3g}" if s["samples"] else "0 (init)", fmt(s["bound"], 1), fmt(s["log_px"], 1),
                     fmt(s["enc_spread"], 4), fmt(s["enc_scale"], 3), fmt(s["dec_std_z"], 4),
                     fmt(s["delta_logpx"], 1), fmt(s["dream_corr"], 3), fmt(s["dream_mse"], 3), fmt(s["ess"], 2)]
            if with_floor:
                cells += [fmt(s.get("dec_scale"), 4), fmt(s.get("at_floor"), 3)]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def pilot_table(records):
    rows = ["| method | init std | lr | train bound | test bound | enc spread | dream corr | note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in records:
        s = r["stages"][-1]
        rows.append(f"| {r['method']} | {init_name(r['init_std'])} | {r['lr']} | {fmt(s.get('train_bound'), 1)} | "
                    f"{fmt(s['bound'], 1)} | {fmt(s['enc_spread'], 4)} | {fmt(s['dream_corr'], 3)} | "
                    f"{'diverged' if r['error'] else ''} |")
    return "\n".join(rows)


def best_lrs(pilots):
    """(method, init) -> the step size of the best final training bound (a diverging run loses)."""
    best = {}
    for r in pilots:
        key = (r["method"], r["init_std"])
        score = -math.inf if r["error"] or len(r["stages"]) < 2 else r["stages"][-1]["train_bound"]
        if key not in best or score > best[key][1]:
            best[key] = (r["lr"], score)
    return {key: lr for key, (lr, _) in best.items()}


def set_floor(min_scale):
    """Make ``min_scale`` the default variance floor of GaussianLikelihood in this process."""
    defaults = list(GaussianLikelihood.__init__.__defaults__)
    defaults[-1] = min_scale
    GaussianLikelihood.__init__.__defaults__ = tuple(defaults)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="scratch folder for the runs and the results (default: a new temporary folder)")
    parser.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA"))
    parser.add_argument("--stages", default="pilot,long,floor,mnist")
    parser.add_argument("--pilot-samples", type=int, default=150_000)
    parser.add_argument("--long-samples", type=int, default=10**6)
    parser.add_argument("--long-runs", default="wake-sleep:10:0.01,wake-sleep:10:0.1,wake-sleep:10:default,"
                        "meanfield:10:0.01,meanfield:10:0.1,wake-sleep:2:0.01,wake-sleep:2:0.1,meanfield:2:0.1",
                        help="method:Nz:init triples of the long stage")
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--rws-epochs", type=int, default=8)
    parser.add_argument("--mnist-methods", default=",".join(METHODS), help="methods of the mnist stage")
    parser.add_argument("--seeds", default="1,2", help="seeds of the seeds stage")
    parser.add_argument("--seed-grid", default="0.01:0.01,0.01:0.02,0.1:0.01,0.1:0.02",
                        help="init:lr pairs of the seeds stage")
    parser.add_argument("--lrs", help="method:init=lr,... step sizes to use instead of running the pilot "
                        "(e.g. from an earlier run's diagnosis.json 'pilot_lr')")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="wake_sleep_diagnosis-"))
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    lines = []
    results = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args)}

    def log(text):
        print(text, flush=True)

    def save():
        (out / "diagnosis.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "diagnosis.md").write_text("\n".join(lines) + "\n")

    def emit(text):
        lines.append(text)
        print(text, flush=True)
        save()

    def fresh(name):
        path = runs / name
        if path.exists():
            raise SystemExit(f"{path} exists: pass a fresh --out")
        return path

    start = time.perf_counter()
    frey_epoch = 1765
    base = make_config("frey-face", 10, 200, "wake-sleep", 0.01, 0.01, 1, runs / "unused", args.data_dir, args.seed)
    _, frey = initial_model(base)
    results["frey_z_ignoring_bound"] = z_ignoring_bound(frey, True)
    results["frey_pixel_std"] = frey.train.std(0).mean().item()
    emit(f"Frey Face: bound of the best decoder that ignores z {results['frey_z_ignoring_bound']:.1f} nats (test); "
         f"pixel std of the data, averaged over pixels, {results['frey_pixel_std']:.4f}\n")

    lrs = {}
    if args.lrs:
        for item in args.lrs.split(","):
            key, lr = item.split("=")
            method, init = key.split(":")
            lrs[(method, None if init == "default" else float(init))] = float(lr)
        results["pilot_lr"] = {f"{m}:{init_name(i)}": lr for (m, i), lr in lrs.items()}
        emit("Step sizes given by --lrs: " + ", ".join(f"{m} init {init_name(i)}: {lr}" for (m, i), lr in lrs.items())
             + "\n")
    elif "pilot" in stages or "long" in stages or "floor" in stages:
        epochs = max(1, math.ceil(args.pilot_samples / frey_epoch))
        pilots = []
        log(f"pilot: {epochs} epochs each")
        for method in METHODS:
            for init in INITS:
                for lr in LEARNING_RATES:
                    config = make_config("frey-face", 10, 200, method, init, lr, epochs,
                                         fresh(f"pilot-{method}-{init_name(init)}-{lr}"), args.data_dir, args.seed)
                    pilots.append(run(config, [epochs], log))
        results["pilot"] = pilots
        lrs = best_lrs(pilots)
        results["pilot_lr"] = {f"{m}:{init_name(i)}": lr for (m, i), lr in lrs.items()}
        emit(f"### Pilot: Frey Face, Nz = 10, {epochs * frey_epoch} samples\n")
        emit(pilot_table(pilots) + "\n")
        emit("Step size chosen by the final training bound: " +
             ", ".join(f"{m} init {init_name(i)}: {lr}" for (m, i), lr in lrs.items()) + "\n")

    if "long" in stages:
        total = max(1, math.ceil(args.long_samples / frey_epoch))
        checkpoints = sorted({e for e in (max(1, total // 50), max(1, total // 10), max(1, (3 * total) // 10), total)})
        longs = []
        log(f"long: checkpoints at epochs {checkpoints}")
        for spec in args.long_runs.split(","):
            method, nz, init = spec.split(":")
            init = None if init == "default" else float(init)
            lr = lrs[(method, init)]
            config = make_config("frey-face", int(nz), 200, method, init, lr, checkpoints[0],
                                 fresh(f"long-{method}-{nz}-{init_name(init)}-{lr}"), args.data_dir, args.seed,
                                 eval_every=max(1, total // 20))
            longs.append(run(config, checkpoints, log))
            results["long"] = longs
            save()
        emit(f"### Frey Face, step size from the pilot, up to {total * frey_epoch} samples\n")
        emit(table(longs) + "\n")

    if "floor" in stages:
        epochs = max(1, math.ceil(args.pilot_samples / frey_epoch))
        floors = []
        for floor in (1.0 / 32,):
            set_floor(floor)
            for method in METHODS:
                for init in (0.01, 0.1):
                    lr = lrs[(method, init)]
                    config = make_config("frey-face", 10, 200, method, init, lr, epochs,
                                         fresh(f"floor-{floor:.4f}-{method}-{init_name(init)}-{lr}"), args.data_dir,
                                         args.seed)
                    record = run(config, [epochs], log)
                    record["min_scale"] = floor
                    floors.append(record)
        set_floor(1.0 / 256)
        results["floor"] = floors
        emit(f"### Variance floor 1/32 instead of 1/256 (Frey Face, Nz = 10, {epochs * frey_epoch} samples; "
             "compare the pilot rows of the same step size)\n")
        emit(table(floors) + "\n")

    if "seeds" in stages:
        epochs = max(1, math.ceil(args.pilot_samples / frey_epoch))
        seeded = []
        for pair in args.seed_grid.split(","):
            init, lr = (float(v) for v in pair.split(":"))
            for seed in (int(v) for v in args.seeds.split(",")):
                config = make_config("frey-face", 10, 200, "wake-sleep", init, lr, epochs,
                                     fresh(f"seed-{seed}-wake-sleep-{init_name(init)}-{lr}"), args.data_dir, seed)
                record = run(config, [epochs], log)
                record["seed"] = seed
                seeded.append(record)
        results["seeds"] = seeded
        emit(f"### Wake-sleep over seeds (Frey Face, Nz = 10, {epochs * frey_epoch} samples; seed {args.seed} is "
             "in the pilot)\n")
        emit("| init std | lr | seed | train bound | test bound | enc spread | dec std(z) | dream corr |\n"
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in seeded:
            s = r["stages"][-1]
            emit(f"| {init_name(r['init_std'])} | {r['lr']} | {r['seed']} | {fmt(s.get('train_bound'), 1)} | "
                 f"{fmt(s['bound'], 1)} | {fmt(s['enc_spread'], 4)} | {fmt(s['dec_std_z'], 4)} | "
                 f"{fmt(s['dream_corr'], 3)} |")
        emit("")

    if "mnist" in stages:
        mnist = []
        for method in args.mnist_methods.split(","):
            for init in (0.01, 0.1):
                config = make_config("mnist", 20, 500, method, init, 0.02, args.mnist_epochs,
                                     fresh(f"mnist-{method}-{init_name(init)}"), args.data_dir, args.seed,
                                     eval_every=1)
                mnist.append(run(config, [args.mnist_epochs], log))
        _, mnist_data = initial_model(make_config("mnist", 20, 500, "meanfield", 0.01, 0.02, 1, runs / "unused",
                                                  args.data_dir, args.seed))
        results["mnist_z_ignoring_bound"] = z_ignoring_bound(mnist_data, False)
        results["mnist"] = mnist
        emit(f"### MNIST, Nz = 20, 500 hidden units, lr 0.02, {args.mnist_epochs} epochs (diagnostics on "
             f"{MNIST_POINTS} test images; best decoder ignoring z: {results['mnist_z_ignoring_bound']:.1f})\n")
        emit(table(mnist, with_floor=False) + "\n")

    if "rws" in stages:
        rws = []
        for latent_dim in (20, 200):
            for method, particles in (("rws", ESS_PARTICLES), ("meanfield", 1)):
                config = make_config("mnist", latent_dim, 500, method, 0.1, 0.01, args.rws_epochs,
                                     fresh(f"rws-{method}-{latent_dim}"), args.data_dir, args.seed,
                                     eval_every=args.rws_epochs, particles=particles)
                rws.append(run(config, [args.rws_epochs], log))
        results["rws"] = rws
        emit(f"### MNIST, Nz = 20 and 200, 500 hidden units, init std 0.1, lr 0.01, {args.rws_epochs} epochs "
             f"(diagnostics on {MNIST_POINTS} test images; rws with K = {ESS_PARTICLES})\n")
        emit(table(rws, with_floor=False) + "\n")

    results["seconds"] = time.perf_counter() - start
    emit(f"Total {results['seconds'] / 60:.1f} min; runs in {runs}")
    (out / "diagnosis.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "diagnosis.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
