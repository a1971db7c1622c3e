"""AEVB against wake-sleep: the experiments of Figures 2 and 3 of the AEVB paper.

Kingma & Welling (2013, arXiv:1312.6114, section 5) compare AEVB with the wake-sleep algorithm
(Hinton et al. 1995) on MNIST and Frey Face: the same encoder for both, parameters initialised
from N(0, 0.01^2), Adagrad with a global step size chosen from {0.01, 0.02, 0.1} by the training
bound of the first iterations, weight decay equal to a N(0, I) prior on the parameters,
minibatches of 100 and one draw of z per datapoint. Figure 2 plots the average lower bound per
datapoint (train and test) against the number of training samples evaluated; Figure 3 compares
estimated marginal log-likelihoods (MNIST, Nz = 3, 100 hidden units, 1000 and 50,000 training
points).

This script trains every (dataset, Nz, method) of a preset with :func:`pyro_vae.train`; a method
is a training objective of :mod:`pyro_vae.objectives`:

==================  ====================================================================
``aevb-meanfield``  AEVB with SGVB estimator B (analytic KL; the paper's Figure 2)
``aevb-trace``      AEVB with SGVB estimator A (Monte-Carlo KL)
``wake-sleep``      classic wake-sleep: one draw and one dream per datapoint
``rws``             reweighted wake-sleep, K = 5, q-wake update (Bornschein & Bengio 2015)
==================  ====================================================================

The lower bound of every model, wake-sleep's included, is the ELBO under its own recognition
model, estimated by :func:`pyro_vae.evaluation.elbo` inside the training loop (one draw per
datapoint; the train figure on a fixed subset of at most 10,000 training images, the test figure
on the whole test set). ``samples_seen`` counts training datapoints, as the paper's x-axis does;
RWS draws K = 5 particles per datapoint, so it spends more compute per sample (``seconds`` says
how much).

**Settings shared by all methods.** Adagrad, ``init_std = 0.01`` (the same seed, so every method
starts from the same parameters), batch 100, ``weight_decay = 1``: the training loss is scaled to
the whole training set (a minibatch of B stands for N datapoints), so the gradient of the N(0, I)
log-prior on the parameters, -theta, enters with weight 1. The step size is chosen per data set
and method from {0.01, 0.02, 0.1} by a pilot: a short run with each, at the data set's first
latent size, keeping the best final training bound (a diverging run loses). Figure 3's runs have a
pilot of their own, on the larger training set.

**Figure 3.** MNIST with Nz = 3 and 100 hidden units, trained by ``aevb-meanfield`` and
``wake-sleep`` on the first N (after a seeded shuffle) training images, N = 1000 and 50,000. The
marginal likelihood is estimated by importance sampling with the model's own encoder as the
proposal, log (1/K) sum_k p(x, z_k)/q(z_k|x) (:func:`pyro_vae.evaluation.log_likelihood`, a
stochastic lower bound that tightens as K grows), on seeded subsets of the training and the test
points; the paper used an HMC-based estimator (its appendix D). The training subset reaches
:func:`pyro_vae.train` as an MNIST folder of its own: IDX files of the subset beside links to the
test files.

Presets (``--preset``): ``smoke`` runs in seconds for the tests; ``cpu`` is sized to finish within
an hour on two CPU cores, with fewer latent sizes and 10^6 training samples per run instead of the
paper's 10^8; ``paper`` is the paper's grid and length, for a GPU. Runs are independent; they are
spread over ``--workers`` processes (several share one GPU), longest first.

Outputs in ``--out``:

* ``aevb_vs_wake_sleep.json``: one record per evaluation: ``dataset``, ``latent_dim``, ``method``,
  ``samples_seen``, ``train_bound``, ``test_bound``, ``seconds``, and ``epoch``, ``lr``,
  ``hidden_dim``, ``particles``;
* ``aevb_vs_wake_sleep.png``: Figure 2's panels, one per (dataset, Nz);
* ``aevb_vs_wake_sleep_summary.json``: command, wall time, machine and its load, step sizes and
  pilot scores, final bounds; ``aevb_vs_wake_sleep.md``: the final figures as tables;
* ``figure3.json``, ``figure3.png``: the marginal log-likelihoods.

Example::

    python benchmarks/aevb_vs_wake_sleep.py --preset cpu --data-dir ../shared/data
"""

import argparse
import json
import math
import os
import platform
import shlex
import struct
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vae import ConfigError, PyroVAEError, TrainConfig, TrainingError, evaluation, train  # noqa: E402
from pyro_vae.datasets import binarize_once, load_mnist  # noqa: E402
from pyro_vae.training import resolve_device  # noqa: E402

#: method -> (objective, particles)
METHODS = {"aevb-meanfield": ("meanfield", 1), "aevb-trace": ("trace", 1),
           "wake-sleep": ("wake-sleep", 1), "rws": ("rws", 5)}
LEARNING_RATES = (0.01, 0.02, 0.1)
TRAIN_SIZES = {"mnist": 60_000, "frey-face": 1765}
DATA_DIMS = {"mnist": 784, "frey-face": 560}
TITLES = {"mnist": "MNIST", "frey-face": "Frey Face"}
COLORS = {"aevb-meanfield": "C0", "aevb-trace": "C2", "wake-sleep": "C3", "rws": "C1"}
SUBSET_SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Grid:
    """Figure 2's runs on one data set: latent sizes, hidden units, training length in samples,
    epochs between evaluations, and the length of the step-size pilot."""

    latent_dims: tuple
    hidden_dim: int
    samples: int
    eval_every: int
    pilot_samples: int


@dataclass(frozen=True)
class Figure3:
    """The marginal-likelihood comparison: MNIST, two training set sizes, one network."""

    train_sizes: tuple = (1000, 50_000)
    samples: int = 10**6
    evaluations: int = 10  # bound evaluations per run, evenly spaced
    pilot_samples: int = 60_000
    particles: int = 5000  # K of the importance-sampled log p(x)
    points: int = 1000  # training and test points on which log p(x) is estimated (at most)
    latent_dim: int = 3
    hidden_dim: int = 100
    methods: tuple = ("aevb-meanfield", "wake-sleep")


@dataclass(frozen=True)
class Preset:
    grids: dict
    figure3: Figure3
    methods: tuple = tuple(METHODS)


PRESETS = {
    "smoke": Preset({"frey-face": Grid((2,), 20, 3 * 1765, 1, 1765)},
                    Figure3(train_sizes=(200, 400), samples=800, evaluations=2, pilot_samples=400,
                            particles=20, points=50, hidden_dim=20)),
    "cpu": Preset({"frey-face": Grid((2, 10), 200, 10**6, 10, 20 * 1765),
                   "mnist": Grid((3, 20), 500, 10**6, 1, 60_000)},
                  Figure3()),
    "paper": Preset({"frey-face": Grid((2, 5, 10, 20), 200, 10**8, 500, 20 * 1765),
                     "mnist": Grid((3, 5, 10, 20, 200), 500, 10**8, 10, 60_000)},
                    Figure3(samples=10**8, evaluations=50, points=10_000)),
}


@dataclass(frozen=True)
class Setting:
    """Where runs happen: device, data, seed, and the folder of run directories."""

    device: str
    data_dir: Optional[str]
    seed: int
    runs: Path


@dataclass(frozen=True)
class Network:
    """A network on a training set: what a run trains, apart from its method and step size."""

    group: str  # the data set for Figure 2, "figure3-N" for Figure 3
    dataset: str
    latent_dim: int
    hidden_dim: int
    train_size: int
    data_dir: Optional[str]


@dataclass
class Job:
    """One training run, executed by :func:`run_job`, possibly in a worker process."""

    kind: str  # "pilot", "figure2" or "figure3"
    network: Network
    method: str
    config: dict
    cost: float
    log_likelihood: Optional[dict] = None  # {"particles": K, "points": M} for Figure 3's runs


def make_job(kind: str, network: Network, method: str, lr: float, samples: int, evaluations_every: int,
             setting: Setting, log_likelihood: Optional[dict] = None) -> Job:
    """The job training ``network`` with ``method`` at step size ``lr`` for about ``samples`` samples."""
    objective, particles = METHODS[method]
    epochs = max(1, math.ceil(samples / network.train_size))
    name = f"{kind}-{network.group}-{network.latent_dim}-{method}-{lr}"
    config = TrainConfig(dataset=network.dataset, data_dir=network.data_dir or setting.data_dir,
                         latent_dim=network.latent_dim, hidden_dims=[network.hidden_dim], epochs=epochs,
                         batch_size=100, objective=objective, particles=particles, optimizer="adagrad", lr=lr,
                         weight_decay=1.0, init_std=0.01, seed=setting.seed, device=setting.device,
                         eval_every=max(1, min(evaluations_every, epochs)), eval_particles=1,
                         out=str(setting.runs / name))
    config.resolved()  # a bad configuration fails here, before any run starts
    # Multiply-adds of the networks per step, a proxy for the run's length (to start long ones first).
    cost = epochs * network.train_size * DATA_DIMS[network.dataset] * network.hidden_dim * (particles + 1)
    return Job(kind, network, method, asdict(config), cost, log_likelihood)


def run_job(job: Job) -> dict:
    """Train one run; for Figure 3's runs also estimate log p(x) on training and test points.

    A run that diverges keeps the history it had (read back from its run directory) and reports
    its error.
    """
    # One CPU thread per run: runs in parallel use the cores. (On a shared machine, several
    # threads per small run are far slower than one: they spin waiting for each other.)
    torch.set_num_threads(1)
    config = TrainConfig(**job.config)
    result = {"job": job, "error": None, "log_likelihood": None}
    try:
        run = train(config, progress=False)
    except TrainingError as error:
        history_file = Path(config.out) / "history.json"
        return {**result, "history": json.loads(history_file.read_text()) if history_file.exists() else [],
                "error": str(error)}
    result["history"] = run.history
    if job.log_likelihood is not None:
        points, particles = job.log_likelihood["points"], job.log_likelihood["particles"]
        # Binary images fixed once, as those of the train and test bounds are.
        splits = {"train": binarize_once(_seeded_subset(run.data.train, points)),
                  "test": _seeded_subset(run.data.test, points)}  # binarized by the data loader
        run.model.eval()
        result["log_likelihood"] = {split: evaluation.log_likelihood(run.model.model, run.model.guide, x,
                                                                     particles).as_dict()
                                    for split, x in splits.items()}
    return result


def _seeded_subset(x: torch.Tensor, size: int) -> torch.Tensor:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[:size]
    return x[order.to(x.device)]


def run_jobs(jobs: Sequence[Job], workers: int, start: float) -> list[dict]:
    """Run ``jobs``, longest first: in this process with one worker, else in a pool of processes."""
    ordered = sorted(jobs, key=lambda job: -job.cost)
    if workers == 1:
        return [_report(run_job(job), start) for job in ordered]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return [_report(future.result(), start) for future in as_completed([pool.submit(run_job, job) for job in ordered])]


def _report(result: dict, start: float) -> dict:
    job, history = result["job"], result["history"]
    final = (f"train {history[-1]['train_elbo']:.2f}, test {history[-1]['test_elbo']:.2f} after "
             f"{history[-1]['samples_seen']:.3g} samples in {history[-1]['seconds']:.0f} s") if history else "no evaluation"
    status = f" ({result['error']})" if result["error"] else ""
    print(f"[{time.perf_counter() - start:7.0f} s] {job.kind} {job.network.group} Nz={job.network.latent_dim} "
          f"{job.method} lr={job.config['lr']}: {final}{status}", flush=True)
    return result


def choose_learning_rates(results: Sequence[dict]) -> tuple[dict, dict]:
    """The step size with the best final training bound per (group, method), and every pilot's score."""
    scores: dict = {}
    for result in results:
        job, history = result["job"], result["history"]
        final = history[-1]["train_elbo"] if history and result["error"] is None else -math.inf
        scores.setdefault((job.network.group, job.method), {})[job.config["lr"]] = (
            final if math.isfinite(final) else -math.inf)
    chosen = {}
    for (group, method), by_lr in scores.items():
        best = max(by_lr, key=by_lr.get)
        if by_lr[best] == -math.inf:
            raise TrainingError(f"every step size in {LEARNING_RATES} diverged in the pilot of {method} on {group}")
        chosen[(group, method)] = best
    return chosen, scores


def write_idx(path: Path, array: torch.Tensor, magic: int) -> None:
    """A uint8 tensor as an IDX file, the format of MNIST's raw files."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", size) for size in array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def mnist_subset(data_dir: Optional[str], size: int, folder: Path) -> str:
    """A data folder whose MNIST has the first ``size`` training images after a seeded shuffle and
    the whole test set; returns it as a ``data_dir`` for :class:`~pyro_vae.TrainConfig`."""
    mnist = load_mnist(data_dir)
    if not 0 < size <= len(mnist.train):
        raise ConfigError(f"a Figure 3 training set of {size} images is impossible: MNIST has {len(mnist.train)}")
    index = torch.randperm(len(mnist.train), generator=torch.Generator().manual_seed(SUBSET_SEED))[:size]
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    grey_levels = (mnist.train[index] * 255).round().to(torch.uint8).reshape(size, *mnist.image_shape)
    write_idx(raw / "train-images-idx3-ubyte", grey_levels, 2051)
    write_idx(raw / "train-labels-idx1-ubyte", mnist.train_labels[index].to(torch.uint8), 2049)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).symlink_to((Path(mnist.source) / name).resolve())
    return str(folder)


def figure2_networks(preset: Preset) -> list[Network]:
    return [Network(dataset, dataset, latent_dim, grid.hidden_dim, TRAIN_SIZES[dataset], None)
            for dataset, grid in preset.grids.items() for latent_dim in grid.latent_dims]


def figure3_networks(figure3: Figure3, setting: Setting) -> list[Network]:
    return [Network(f"figure3-{size}", "mnist", figure3.latent_dim, figure3.hidden_dim, size,
                    mnist_subset(setting.data_dir, size, setting.runs / f"mnist-{size}"))
            for size in figure3.train_sizes]


def pilot_jobs(preset: Preset, figure3: list[Network], setting: Setting) -> list[Job]:
    """Short runs with every candidate step size: per data set at its first latent size, and for
    Figure 3 on its largest training set."""
    pilots = [(network, preset.grids[network.dataset].pilot_samples, preset.methods)
              for network in figure2_networks(preset) if network.latent_dim == preset.grids[network.dataset].latent_dims[0]]
    pilots.append((max(figure3, key=lambda network: network.train_size), preset.figure3.pilot_samples,
                   preset.figure3.methods))
    return [make_job("pilot", network, method, lr, samples, 10**9, setting)
            for network, samples, methods in pilots for method in methods for lr in LEARNING_RATES]


def experiment_jobs(preset: Preset, figure3: list[Network], lrs: dict, setting: Setting) -> list[Job]:
    jobs = [make_job("figure2", network, method, lrs[(network.group, method)], preset.grids[network.dataset].samples,
                     preset.grids[network.dataset].eval_every, setting)
            for network in figure2_networks(preset) for method in preset.methods]
    largest = max(figure3, key=lambda network: network.train_size).group
    for network in figure3:
        epochs = max(1, math.ceil(preset.figure3.samples / network.train_size))
        jobs += [make_job("figure3", network, method, lrs[(largest, method)], preset.figure3.samples,
                          max(1, epochs // preset.figure3.evaluations), setting,
                          {"particles": preset.figure3.particles, "points": preset.figure3.points})
                 for method in preset.figure3.methods]
    return jobs


def figure2_records(results: Sequence[dict]) -> list[dict]:
    records = []
    for result in results:
        job = result["job"]
        for entry in result["history"]:
            records.append({"dataset": job.network.dataset, "latent_dim": job.network.latent_dim,
                            "method": job.method, "samples_seen": entry["samples_seen"],
                            "train_bound": entry["train_elbo"], "test_bound": entry["test_elbo"],
                            "seconds": entry["seconds"], "epoch": entry["epoch"], "lr": job.config["lr"],
                            "hidden_dim": job.network.hidden_dim, "particles": job.config["particles"]})
    return records


def figure3_records(results: Sequence[dict]) -> list[dict]:
    records = []
    for result in results:
        job, history = result["job"], result["history"]
        for split, estimate in (result["log_likelihood"] or {}).items():
            records.append({"train_size": job.network.train_size, "method": job.method, "split": split,
                            "log_likelihood": estimate["mean"], "stderr": estimate["stderr"],
                            "particles": estimate["num_particles"], "points": estimate["num_data"],
                            "samples_seen": history[-1]["samples_seen"], "final_train_bound": history[-1]["train_elbo"],
                            "final_test_bound": history[-1]["test_elbo"], "seconds": history[-1]["seconds"],
                            "lr": job.config["lr"]})
    return records


def plot_figure2(records: Sequence[dict], preset: Preset, path: Path) -> None:
    """One panel per (dataset, Nz): train (solid) and test (dashed) bound per method, log x-axis."""
    datasets = list(preset.grids)
    columns = max(len(grid.latent_dims) for grid in preset.grids.values())
    legend_columns = min(6, 2 * columns)
    legend_height = 0.3 * math.ceil((len(preset.methods) + 2) / legend_columns)  # inches
    height = 3.0 * len(datasets) + legend_height
    fig, axes = plt.subplots(len(datasets), columns, figsize=(3.4 * columns, height), dpi=120, squeeze=False)
    for row, dataset in enumerate(datasets):
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(preset.grids[dataset].latent_dims):
                ax.set_axis_off()
                continue
            latent_dim = preset.grids[dataset].latent_dims[column]
            panel = [r for r in records if r["dataset"] == dataset and r["latent_dim"] == latent_dim]
            finals = []
            for method in preset.methods:
                curve = sorted((r for r in panel if r["method"] == method), key=lambda r: r["samples_seen"])
                if not curve:
                    continue
                samples = [r["samples_seen"] for r in curve]
                for key, style in (("train_bound", "-"), ("test_bound", "--")):
                    ax.plot(samples, [r[key] for r in curve], style, color=COLORS[method], linewidth=1.3)
                    finals.append(curve[-1][key])
            ax.set_xscale("log")
            ax.set_title(f"{TITLES[dataset]}, $N_z$ = {latent_dim}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            _focus(ax, panel, finals)
            if row == len(datasets) - 1:
                ax.set_xlabel("# training samples evaluated")
            if column == 0:
                ax.set_ylabel("lower bound per datapoint (nats)")
    handles = [plt.Line2D([], [], color=COLORS[m], label=m) for m in preset.methods]
    handles += [plt.Line2D([], [], color="k", linestyle="-", label="train"),
                plt.Line2D([], [], color="k", linestyle="--", label="test")]
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _focus(ax, panel: Sequence[dict], finals: Sequence[float]) -> None:
    """Y-limits that show where every curve ends, as the paper's panels do: early values of a slow
    method may fall below the panel."""
    values = [r[k] for r in panel for k in ("train_bound", "test_bound") if math.isfinite(r[k])]
    finals = [v for v in finals if math.isfinite(v)]
    if not values or not finals:
        return
    top, low = max(values), min(finals)
    span = max(top - low, 1.0)
    ax.set_ylim(max(min(values), low - 1.5 * span) - 0.02 * span, top + 0.05 * span)


def plot_figure3(records: Sequence[dict], figure3: Figure3, path: Path) -> None:
    """Estimated log p(x) (train: solid, test: dashed) against the training set size, per method."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for method in figure3.methods:
        for split, style, marker in (("train", "-", "o"), ("test", "--", "s")):
            points = sorted((r for r in records if r["method"] == method and r["split"] == split),
                            key=lambda r: r["train_size"])
            if points:
                ax.errorbar([r["train_size"] for r in points], [r["log_likelihood"] for r in points],
                            yerr=[r["stderr"] for r in points], fmt=style + marker, color=COLORS[method],
                            capsize=3, label=f"{method}, {split}")
    ax.set_xscale("log")
    ax.set_xlabel("# training points")
    ax.set_ylabel("estimated log p(x) per datapoint (nats)")
    particles = sorted({r["particles"] for r in records})
    ax.set_title(f"MNIST, $N_z$ = {figure3.latent_dim}, {figure3.hidden_dim} hidden units: "
                 f"importance sampling, K = {', '.join(map(str, particles))}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def final_records(results: Sequence[dict]) -> list[dict]:
    """The last evaluation of every Figure 2 run, with its error if it diverged."""
    finals = []
    for result in results:
        job, history = result["job"], result["history"]
        last = history[-1] if history else {}
        finals.append({"dataset": job.network.dataset, "latent_dim": job.network.latent_dim, "method": job.method,
                       "lr": job.config["lr"], "samples_seen": last.get("samples_seen"),
                       "train_bound": last.get("train_elbo"), "test_bound": last.get("test_elbo"),
                       "seconds": last.get("seconds"), "error": result["error"]})
    order = {method: i for i, method in enumerate(METHODS)}
    return sorted(finals, key=lambda r: (r["dataset"], r["latent_dim"], order[r["method"]]))


def markdown(summary: dict, figure3: Sequence[dict]) -> str:
    """The final figures as Markdown tables."""
    lines = [f"Preset `{summary['preset']}`, `{summary['command']}`: {summary['wall_seconds'] / 60:.1f} min wall time "
             f"on {summary['machine']['device']} ({summary['workers']} runs at a time, one CPU thread each); load average {summary['load_average_start'][0]:.1f} at the start, "
             f"{summary['load_average_end'][0]:.1f} at the end.", "",
             "| data set | Nz | method | step size | samples | train bound | test bound | seconds |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary["final"]:
        bounds = (f"{r['train_bound']:.2f} | {r['test_bound']:.2f}" if r["train_bound"] is not None else "– | –")
        note = " (diverged)" if r["error"] else ""
        lines.append(f"| {TITLES[r['dataset']]} | {r['latent_dim']} | {r['method']}{note} | {r['lr']} | "
                     f"{r['samples_seen'] or 0:.3g} | {bounds} | {r['seconds'] or 0:.0f} |")
    if figure3:
        lines += ["", "| training points | method | split | log p(x) | ± stderr | K | points | train bound | test bound |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(figure3, key=lambda r: (r["train_size"], r["method"], r["split"])):
            lines.append(f"| {r['train_size']} | {r['method']} | {r['split']} | {r['log_likelihood']:.2f} | "
                         f"{r['stderr']:.2f} | {r['particles']} | {r['points']} | {r['final_train_bound']:.2f} | "
                         f"{r['final_test_bound']:.2f} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=True) + "\n")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="AEVB versus wake-sleep: the AEVB paper's Figures 2 and 3.")
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu",
                        help="smoke: seconds; cpu: under an hour on 2 cores; paper: 10^8 samples per run, for a GPU "
                             "(default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for results and figures (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at a time, each in its own process (default: the CPU cores; 4 on a GPU)")
    parser.add_argument("--runs-dir", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        if args.runs_dir is not None:
            Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
            benchmark(args, argv, Path(args.runs_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="aevb-vs-wake-sleep-") as runs:
                benchmark(args, argv, Path(runs))
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def benchmark(args: argparse.Namespace, argv: Sequence[str], runs: Path) -> None:
    """Pilots, then every run of the preset; writes results and figures to ``args.out``."""
    preset = PRESETS[args.preset]
    device = resolve_device(args.device)
    cores = os.cpu_count() or 1
    workers = args.workers or (4 if device.type == "cuda" else cores)
    if workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    setting = Setting(device.type, args.data_dir, args.seed, runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, load_start = time.perf_counter(), os.getloadavg()

    figure3 = figure3_networks(preset.figure3, setting)
    lrs, scores = choose_learning_rates(run_jobs(pilot_jobs(preset, figure3, setting), workers, start))
    results = run_jobs(experiment_jobs(preset, figure3, lrs, setting), workers, start)
    figure2 = [r for r in results if r["job"].kind == "figure2"]
    figure3_results = figure3_records([r for r in results if r["job"].kind == "figure3"])

    summary = {"preset": args.preset,
               "command": "python benchmarks/aevb_vs_wake_sleep.py " + shlex.join(argv),
               "wall_seconds": time.perf_counter() - start, "workers": workers,
               "load_average_start": load_start, "load_average_end": os.getloadavg(),
               "machine": {"device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                           "cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
                           "torch": torch.__version__, "pyro": pyro.__version__},
               "preset_settings": asdict(preset),
               "learning_rates": {f"{group}/{method}": lr for (group, method), lr in lrs.items()},
               "pilot_scores": {f"{group}/{method}": {lr: score if math.isfinite(score) else None
                                                      for lr, score in by_lr.items()}
                                for (group, method), by_lr in scores.items()},
               "final": final_records(figure2)}
    write_json(out / "aevb_vs_wake_sleep.json", figure2_records(figure2))
    write_json(out / "aevb_vs_wake_sleep_summary.json", summary)
    write_json(out / "figure3.json", {
        "estimator": "importance sampling with the model's encoder as proposal: log (1/K) sum_k p(x, z_k) / q(z_k|x), "
                     "z_k ~ q(z|x); a stochastic lower bound on log p(x) that tightens as K grows",
        "records": figure3_results})
    (out / "aevb_vs_wake_sleep.md").write_text(markdown(summary, figure3_results))
    plot_figure2(figure2_records(figure2), preset, out / "aevb_vs_wake_sleep.png")
    plot_figure3(figure3_results, preset.figure3, out / "figure3.png")
    print(markdown(summary, figure3_results), flush=True)


if __name__ == "__main__":
    sys.exit(main())
