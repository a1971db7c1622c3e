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

**Settings shared by all methods.** Adagrad, the preset's ``init_std`` (the same seed, so every
method starts from the same parameters; the paper's "N(0, 0.01)" is read as a standard deviation of
0.01 by ``cpu`` and of 0.1, a variance of 0.01, by ``figure2``), batch 100, ``weight_decay = 1``: the training loss is scaled to
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

Presets (``--preset``, listed by ``--help``): ``smoke`` runs in seconds for the tests; ``cpu``
(committed) is sized to finish within an hour on two CPU cores, with 4 of the 9 panels and 10^6
training samples per run; ``figure2`` is all nine panels of Figure 2 and the Figure 3 analogue at
10^7 samples; ``paper`` the same grid at the paper's 10^8. Runs are independent; they are spread
over ``--workers`` processes (several share one GPU), longest first.

**Where results go.** A preset of :data:`COMMITTED_PRESETS` writes to its folder in
``benchmarks/results/`` and any other to ``runs/benchmarks/<preset>/`` under the working
directory, unless ``--out`` is given. Files that exist in ``benchmarks/results/`` are replaced
only with ``--overwrite`` (:mod:`committed`); the refusal comes before any training. The run
directories of a committed preset lie in the repository too: their records (``config.json``,
``history.json``, ``metrics.json``, :data:`OUTCOME`) are committed as runs finish, their
checkpoints, plots and data are not (``.gitignore``), so a fresh clone continues the benchmark
where the last commit left it.

**Stopping and continuing.** Every run (pilots included) has its own run directory in
``--runs-dir`` (default ``OUT/runs/<preset>/``), named by kind, data set, Nz, method and step size.
Given the same command again, a finished run is read back, one with a checkpoint continues from
it with :func:`pyro_vae.resume` (bit-exact on the same device type), and one that stopped before
its first checkpoint starts again. A run directory written with other settings is refused, not
continued. After each run a line says how many runs are done, running and left, and the time
left (:class:`Progress`). ``--hours H`` starts only the runs expected to end within H hours, so
that a session's time goes to runs that finish.

Outputs in ``--out``:

* ``aevb_vs_wake_sleep.json``: one record per evaluation: ``dataset``, ``latent_dim``, ``method``,
  ``samples_seen``, ``train_bound``, ``test_bound``, ``seconds``, and ``epoch``, ``lr``,
  ``hidden_dim``, ``particles``;
* ``aevb_vs_wake_sleep.png``: Figure 2's panels, one per (dataset, Nz), over the paper's curves;
* ``aevb_vs_wake_sleep_summary.json``: command, wall time, machine and its load, step sizes and
  pilot scores, final bounds, and ours beside the paper's at 10^6 and 10^7 samples
  (:data:`PAPER`); ``aevb_vs_wake_sleep.md``: the same as tables;
* ``figure3.json``, ``figure3.png``: the marginal log-likelihoods, beside the paper's (no plot for a
  preset without Figure 3's runs).

Example::

    python benchmarks/aevb_vs_wake_sleep.py --preset cpu --data-dir ../shared/data
"""

import argparse
import json
import math
import os
import platform
import shlex
import signal
import struct
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyro_vae import (ConfigError, PyroVAEError, TrainConfig, TrainingError, evaluation, load_dataset,  # noqa: E402
                      load_run, resume, train)
from pyro_vae.batches import binarize_once, prepare_binarization  # noqa: E402
from pyro_vae.config import OLD_COMPILE_MODES  # noqa: E402
from pyro_vae.datasets import load_mnist  # noqa: E402
from pyro_vae.errors import TrainingInterrupted  # noqa: E402
from pyro_vae.stopping import StopSignals  # noqa: E402
from pyro_vae.training import resolve_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from committed import RESULTS, SCRATCH, refuse_to_replace  # noqa: E402
from paper_figures import value_at  # noqa: E402


@dataclass(frozen=True)
class Method:
    """A compared method: its training objective (:mod:`pyro_vae.objectives`), particles per
    datapoint, plot colour, and the name of its curves in the paper's figures (:data:`PAPER`)."""

    objective: str
    particles: int
    color: str
    paper: Optional[str] = None


METHODS = {"aevb-meanfield": Method("meanfield", 1, "C0", paper="aevb"), "aevb-trace": Method("trace", 1, "C2"),
           "wake-sleep": Method("wake-sleep", 1, "C3", paper="wake-sleep"), "rws": Method("rws", 5, "C1")}
LEARNING_RATES = (0.01, 0.02, 0.1)
TRAIN_SIZES = {"mnist": 60_000, "frey-face": 1765}
DATA_DIMS = {"mnist": 784, "frey-face": 560}
TITLES = {"mnist": "MNIST", "frey-face": "Frey Face"}
SUBSET_SEED = 0
#: Presets whose results are committed, and the folder of each: they write there by default.
COMMITTED_PRESETS = {"cpu": RESULTS, "figure2": RESULTS / "figure2", "figure2-small-init": RESULTS / "figure2_small_init"}
#: The paper's "initialised from N(0, 0.01)" read as a variance of 0.01, a standard deviation of 0.1
#: (docs/wake_sleep_frey_face.md: with std 0.01 wake-sleep cannot leave the decoder-ignores-z point on Frey Face).
PAPER_INIT_STD = 0.1
#: The paper's curves of Figures 2 and 3, read from its PDF by ``paper_figures.py``.
PAPER = RESULTS / "paper_figures.json"
#: Where the final table puts our bounds beside the paper's, in training samples.
COMPARED_AT = (10**6, 10**7)
#: The files a benchmark writes to its output folder.
OUTPUTS = ("aevb_vs_wake_sleep.json", "aevb_vs_wake_sleep_summary.json", "aevb_vs_wake_sleep.md",
           "aevb_vs_wake_sleep.png", "figure3.json", "figure3.png")
#: The exit status of a benchmark stopped by ``--hours`` with runs left (EX_TEMPFAIL: try again).
EXIT_OUT_OF_TIME = 75
#: Written by :func:`run_job` into a run directory when the job is over: its error and log p(x).
OUTCOME = "benchmark_outcome.json"


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
    """The marginal-likelihood comparison: MNIST, two training set sizes, one network (no training
    sets: a preset without it)."""

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
    """Figure 2's grids per data set, Figure 3's runs, and what every run shares."""

    grids: dict
    figure3: Figure3
    about: str
    methods: tuple = tuple(METHODS)
    init_std: float = 0.01
    compile: str = "eager"  # TrainConfig.compile: the training step


PRESETS = {
    "smoke": Preset({"frey-face": Grid((2,), 20, 3 * 1765, 1, 1765)},
                    Figure3(train_sizes=(200, 400), samples=800, evaluations=2, pilot_samples=400,
                            particles=20, points=50, hidden_dim=20),
                    "seconds, for the tests"),
    "cpu": Preset({"frey-face": Grid((2, 10), 200, 10**6, 10, 20 * 1765),
                   "mnist": Grid((3, 20), 500, 10**6, 1, 60_000)},
                  Figure3(), "4 of the 9 panels at 10^6 samples: under an hour on 2 CPU cores"),
    "figure2": Preset({"frey-face": Grid((2, 5, 10, 20), 200, 10**7, 50, 57 * 1765),
                       "mnist": Grid((3, 5, 10, 20, 200), 500, 10**7, 2, 2 * 60_000)},
                      Figure3(samples=10**7, evaluations=20, pilot_samples=2 * 50_000),
                      "all 9 panels and Figure 3 at 10^7 samples: days on 2 CPU cores, hours on a GPU",
                      init_std=PAPER_INIT_STD, compile="replay"),
    # figure2's init std 0.1 lets wake-sleep learn on Frey Face but holds it back on MNIST (docs/benchmarks.md):
    # MNIST's panels again from std 0.01, wake-sleep beside AEVB under that init.
    "figure2-small-init": Preset({"mnist": Grid((3, 5, 10, 20, 200), 500, 10**7, 2, 2 * 60_000)}, Figure3(train_sizes=()),
                                 "MNIST's 5 panels from init std 0.01, AEVB and wake-sleep, to 10^7 samples",
                                 methods=("aevb-meanfield", "wake-sleep"), init_std=0.01, compile="replay"),
    "paper": Preset({"frey-face": Grid((2, 5, 10, 20), 200, 10**8, 500, 57 * 1765),
                     "mnist": Grid((3, 5, 10, 20, 200), 500, 10**8, 10, 2 * 60_000)},
                    Figure3(samples=10**8, evaluations=50, pilot_samples=2 * 50_000, points=10_000),
                    "the paper's 10^8 samples per run, for a GPU", init_std=PAPER_INIT_STD, compile="replay"),
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
    cost: float  # multiply-adds of the networks over the run: a proxy for its length
    log_likelihood: Optional[dict] = None  # {"particles": K, "points": M} for Figure 3's runs

    @property
    def name(self) -> str:
        return f"{self.kind} {self.network.group} Nz={self.network.latent_dim} {self.method} lr={self.config['lr']}"


def make_job(kind: str, network: Network, method: str, lr: float, samples: int, evaluations_every: int,
             preset: Preset, setting: Setting, log_likelihood: Optional[dict] = None) -> Job:
    """The job training ``network`` with ``method`` at step size ``lr`` for about ``samples`` samples."""
    objective, particles = METHODS[method].objective, METHODS[method].particles
    epochs = max(1, math.ceil(samples / network.train_size))
    name = f"{kind}-{network.group}-{network.latent_dim}-{method}-{lr}"
    config = TrainConfig(dataset=network.dataset, data_dir=network.data_dir or setting.data_dir,
                         latent_dim=network.latent_dim, hidden_dims=[network.hidden_dim], epochs=epochs,
                         batch_size=100, objective=objective, particles=particles, optimizer="adagrad", lr=lr,
                         weight_decay=1.0, init_std=preset.init_std, seed=setting.seed, device=setting.device,
                         eval_every=max(1, min(evaluations_every, epochs)), eval_particles=1,
                         compile=preset.compile, out=str(setting.runs / name))
    config.resolved()  # a bad configuration fails here, before any run starts
    cost = epochs * network.train_size * DATA_DIMS[network.dataset] * network.hidden_dim * (particles + 1)
    return Job(kind, network, method, asdict(config), cost, log_likelihood)


def job_state(job: Job) -> tuple[str, int]:
    """What the job's run directory holds, and the epochs it has trained.

    ``"over"``: the job ended (:data:`OUTCOME` written); ``"trained"``: training finished
    (``metrics.json`` of the configured epochs) but not the job; ``"checkpoint"``: a checkpoint to
    resume; ``"new"``: nothing to continue (no folder, or only ``config.json``: it stopped before
    its first checkpoint). A folder written with other settings is refused.
    """
    run_dir = Path(job.config["out"])
    config_file = run_dir / "config.json"
    if config_file.exists():
        stored, expected = json.loads(config_file.read_text())["config"], asdict(TrainConfig(**job.config).resolved())
        stored["compile"] = OLD_COMPILE_MODES.get(stored.get("compile"), stored.get("compile"))  # renamed modes
        differences = [f"{key} {stored[key]!r}, now {value!r}" for key, value in expected.items()
                       if key in stored and key not in ("data_dir", "out") and stored[key] != value]
        if differences:
            raise ConfigError(f"{run_dir} holds a run with other settings ({'; '.join(differences)}): pass another "
                              "--out or --runs-dir, or delete that folder to train it again")
    history_file = run_dir / "history.json"
    epochs_trained = json.loads(history_file.read_text())[-1]["epoch"] if history_file.exists() else 0
    metrics_file = run_dir / "metrics.json"
    if (run_dir / OUTCOME).exists():
        return "over", epochs_trained
    if metrics_file.exists() and json.loads(metrics_file.read_text())["config"]["epochs"] == job.config["epochs"]:
        return "trained", epochs_trained
    if (run_dir / "checkpoint.pt").exists():
        return "checkpoint", epochs_trained
    return "new", 0


def run_job(job: Job) -> dict:
    """Train, continue or read back one run (see :func:`job_state`); for Figure 3's runs also
    estimate log p(x) on training and test points.

    A run that diverges keeps the history it had (read back from its run directory) and reports
    its error. Returns the job, its history, error and log p(x), and the seconds and the part of
    :attr:`Job.cost` trained in this call; or, for a run stopped by a signal (it saved a
    checkpoint), ``stopped``: the signal's number.
    """
    # One CPU thread per run: runs in parallel use the cores. (On a shared machine, several
    # threads per small run are far slower than one: they spin waiting for each other.)
    torch.set_num_threads(1)
    config = TrainConfig(**job.config)
    run_dir = Path(config.out)
    state, epochs_before = job_state(job)
    start = time.perf_counter()
    if state == "over":
        outcome = json.loads((run_dir / OUTCOME).read_text())
    else:
        outcome = {"error": None, "log_likelihood": None}
        try:
            if state == "checkpoint":
                resume(run_dir, data_dir=config.data_dir, progress=False)
            elif state == "new":
                train(config, progress=False, overwrite=True)
        except TrainingError as error:
            outcome["error"] = str(error)
        except TrainingInterrupted as stop:
            return {"job": job, "stopped": stop.signal_number}
        if job.log_likelihood is not None and outcome["error"] is None:
            outcome["log_likelihood"] = log_likelihoods(run_dir, config, **job.log_likelihood)
        write_json(run_dir / OUTCOME, outcome)
    history_file = run_dir / "history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    trained = 0.0 if state in ("over", "trained") else job.cost * (1 - epochs_before / config.epochs)
    return {"job": job, "history": history, **outcome, "state": state, "stopped": None,
            "seconds": time.perf_counter() - start, "trained_cost": trained}


def log_likelihoods(run_dir: Path, config: TrainConfig, particles: int, points: int) -> dict:
    """log p(x) of the trained run on seeded subsets of its training and test images, with draws
    seeded by the run's seed (so a run read back from its directory gives the same figures)."""
    model, config, _ = load_run(run_dir, config.device, config.data_dir)
    data, _ = prepare_binarization(load_dataset(config.dataset, config.data_dir).to(config.device), config.binarize)
    # Binary images fixed once, as those of the train and test bounds are.
    splits = {"train": binarize_once(_seeded_subset(data.train, points)),
              "test": _seeded_subset(data.test, points)}  # binarized by prepare_binarization
    model.eval()
    pyro.set_rng_seed(config.seed)
    return {split: evaluation.log_likelihood(model.model, model.guide, x, particles).as_dict()
            for split, x in splits.items()}


def _seeded_subset(x: torch.Tensor, size: int) -> torch.Tensor:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[:size]
    return x[order.to(x.device)]


class Progress:
    """Runs done, running and left, and the time each run left should take.

    A run's time is its :attr:`Job.cost` left times the seconds per unit of cost of its network (data
    set and hidden units) and method: measured by the runs trained in this invocation where there are
    some; else its pilots' rate scaled by :meth:`machine_factor` (the pilots all ran in one invocation,
    on one machine, perhaps not this one); else read from the finished runs read back; else the rate
    of every run trained so far; unknown before any.
    """

    def __init__(self, workers: int, start: float):
        self.workers, self.start = workers, start
        self.costs: dict = {}  # job name -> (job, cost left)
        self.later: list = []  # the runs to come after those planned (the pilots), at their full cost
        self.done = 0
        self.trained: dict = {}  # (data set, hidden units, method) -> [seconds, cost] trained in this invocation
        self.read_back: dict = {}  # the same, from finished runs read back
        self.piloted: dict = {}  # the same, from the pilots (trained or read back)

    def now(self) -> float:
        return time.perf_counter()

    def plan(self, jobs: Sequence[Job], states: Sequence[tuple], later: Sequence[Job]) -> None:
        """Add ``jobs`` (in ``states`` from :func:`job_state`), followed by ``later``."""
        self.later = list(later)
        counts: dict = {}
        for job, (state, epochs) in zip(jobs, states):
            counts[state] = counts.get(state, 0) + 1
            self.costs[job.name] = (job, 0.0 if state in ("over", "trained") else job.cost * (1 - epochs / job.config["epochs"]))
        kinds = "/".join(sorted({job.kind for job in jobs}))
        print(f"[{self.now() - self.start:7.0f} s] {len(jobs)} {kinds} runs: "
              f"{counts.get('over', 0) + counts.get('trained', 0)} over already, {counts.get('checkpoint', 0)} "
              f"to continue from a checkpoint, {counts.get('new', 0)} to start", flush=True)

    def seconds(self, job: Job, cost: float) -> Optional[float]:
        """The estimated seconds of ``cost`` of ``job``'s training, or None."""
        key = _rate_key(job)
        if key in self.trained:
            return _rate(self.trained[key]) * cost
        factor = self.machine_factor()
        if factor is not None and key in self.piloted:
            return _rate(self.piloted[key]) * factor * cost
        if key in self.read_back:
            return _rate(self.read_back[key]) * cost
        if self.trained:
            seconds, trained = map(sum, zip(*self.trained.values()))
            return seconds / trained * cost
        return None

    def machine_factor(self) -> Optional[float]:
        """This invocation's seconds per unit of cost over its pilots' (which may have run on another
        machine): the mean ratio over the networks and methods timed both ways; None before there is one."""
        common = [key for key in self.trained if key in self.piloted]
        if not common:
            return None
        return sum(_rate(self.trained[key]) / _rate(self.piloted[key]) for key in common) / len(common)

    def finished(self, result: dict) -> str:
        """Count ``result`` in; the progress line."""
        job = result["job"]
        self.done += 1
        self.costs[job.name] = (job, 0.0)
        if result["trained_cost"] > 0:
            _count(self.trained, job, result["seconds"], result["trained_cost"])
        elif result["history"]:
            _count(self.read_back, job, result["history"][-1]["seconds"], job.cost)
        if job.kind == "pilot" and result["history"]:
            _count(self.piloted, job, result["history"][-1]["seconds"], job.cost)
        left = [(job, cost) for job, cost in self.costs.values() if cost > 0] + [(job, job.cost) for job in self.later]
        running = min(self.workers, len(left))
        line = f"{self.done} runs done, {running} running, {len(left) - running} left"
        estimates = [self.seconds(job, cost) for job, cost in left]
        if left and None not in estimates:
            line += f"; about {_duration(sum(estimates) / running)} left"
        return line

    def fits(self, job: Job, deadline: Optional[float]) -> bool:
        """Whether ``job`` should end before ``deadline`` (None: no deadline; an unknown time fits)."""
        if deadline is None:
            return True
        seconds = self.seconds(job, self.costs[job.name][1])
        return seconds is None or self.now() + 1.1 * seconds <= deadline


def _count(table: dict, job: Job, seconds: float, cost: float) -> None:
    """Add ``seconds`` spent on ``cost`` of ``job`` to its entry of a rate table."""
    entry = table.setdefault(_rate_key(job), [0.0, 0.0])
    entry[0] += seconds
    entry[1] += cost


def _rate(entry: Sequence[float]) -> float:
    """Seconds per unit of cost of a rate table's entry."""
    seconds, cost = entry
    return seconds / cost


def _rate_key(job: Job) -> tuple:
    """What a run's seconds per unit of cost depend on: the network's size (a small network spends more
    of its time outside the matrix products) and the method."""
    return job.network.dataset, job.network.hidden_dim, job.method


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


class Stopped(Exception):
    """The benchmark stopped on a signal; the same command continues it."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


class OutOfTime(Exception):
    """The benchmark stopped at its time limit (``--hours``) with runs left; the same command continues it."""

    def __init__(self, runs_left: int):
        super().__init__(runs_left)
        self.runs_left = runs_left


def run_jobs(jobs: Sequence[Job], workers: int, progress: Progress, later: Sequence[Job] = (),
             deadline: Optional[float] = None) -> list[dict]:
    """Run ``jobs``, longest first, ``workers`` at a time (in this process with one worker, else each
    in a worker process); ``later``: the jobs to come after these, for the time left.

    With a ``deadline`` (a time of :meth:`Progress.now`) a run starts only if it should end before
    it (:meth:`Progress.fits`; the longest that fits goes first), so that no run is cut short; when
    none fits and none is running, :class:`OutOfTime` is raised.

    On SIGTERM or SIGINT no new run starts, running runs stop at a checkpoint, and
    :class:`Stopped` is raised. A worker process sees the signal only when it is sent to the
    process group (as Ctrl-C and ``kill -TERM -PGID`` do), and only while it trains; otherwise it
    finishes its run first.
    """
    ordered = sorted(jobs, key=lambda job: -job.cost)
    states = [job_state(job) for job in ordered]  # refuses every folder of other settings, before any run
    progress.plan(ordered, states, later)
    # Runs that are over are read back here; the others go to the workers.
    results = {job.name: _report(run_job(job), progress) for job, (state, _) in zip(ordered, states) if state == "over"}
    stopped = None
    pool = (ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_ignore_signals)
            if workers > 1 else _InThisProcess())
    with StopSignals() as signals, pool:
        waiting, running = [job for job, (state, _) in zip(ordered, states) if state != "over"], set()
        while waiting or running:
            while len(running) < workers and not (signals.signal or stopped):
                job = next((job for job in waiting if progress.fits(job, deadline)), None)
                if job is None:
                    break
                waiting.remove(job)
                running.add(pool.submit(run_job, job))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                if result["stopped"]:
                    stopped = result["stopped"]
                else:
                    results[result["job"].name] = _report(result, progress)
    if signals.signal or stopped:
        raise Stopped(signals.signal or stopped)
    if waiting:
        raise OutOfTime(len(waiting) + len(later))
    return [results[job.name] for job in ordered]


def _ignore_signals() -> None:
    """In a worker process: SIGTERM and SIGINT are for :func:`pyro_vae.train` only, which installs
    its own handlers while it trains (a worker killed between runs would break the pool)."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)


class _InThisProcess:
    """An executor that runs each call at once, in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


def _report(result: dict, progress: Progress) -> dict:
    job, history = result["job"], result["history"]
    final = (f"train {history[-1]['train_elbo']:.2f}, test {history[-1]['test_elbo']:.2f} after "
             f"{history[-1]['samples_seen']:.3g} samples in {history[-1]['seconds']:.0f} s") if history else "no evaluation"
    status = f" ({result['error']})" if result["error"] else ""
    read_back = " (read back)" if result["state"] in ("over", "trained") else ""
    print(f"[{progress.now() - progress.start:7.0f} s] {job.name}: {final}{status}{read_back}; "
          f"{progress.finished(result)}", flush=True)
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
    write_idx(raw / "train-images-idx3-ubyte", grey_levels, 2051)  # the same bytes when written again
    write_idx(raw / "train-labels-idx1-ubyte", mnist.train_labels[index].to(torch.uint8), 2049)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).unlink(missing_ok=True)
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
    if figure3:
        pilots.append((max(figure3, key=lambda network: network.train_size), preset.figure3.pilot_samples,
                       preset.figure3.methods))
    return [make_job("pilot", network, method, lr, samples, 10**9, preset, setting)
            for network, samples, methods in pilots for method in methods for lr in LEARNING_RATES]


def experiment_jobs(preset: Preset, figure3: list[Network], lrs: Mapping, setting: Setting) -> list[Job]:
    """Figure 2's and Figure 3's runs at the step sizes ``lrs[(group, method)]``."""
    jobs = [make_job("figure2", network, method, lrs[(network.group, method)], preset.grids[network.dataset].samples,
                     preset.grids[network.dataset].eval_every, preset, setting)
            for network in figure2_networks(preset) for method in preset.methods]
    largest = max(figure3, key=lambda network: network.train_size).group if figure3 else None
    for network in figure3:
        epochs = max(1, math.ceil(preset.figure3.samples / network.train_size))
        jobs += [make_job("figure3", network, method, lrs[(largest, method)], preset.figure3.samples,
                          max(1, epochs // preset.figure3.evaluations), preset, setting,
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


def paper_curves() -> dict:
    """The paper's curves (:data:`PAPER`) by (figure, panel, paper's method, split): (samples, value) points."""
    figures = json.loads(PAPER.read_text())
    return {("figure2", (s["dataset"], s["latent_dim"]), s["method"], s["split"]): s["curve"] for s in figures["figure2"]} | {
        ("figure3", s["train_size"], s["method"], s["split"]): s["curve"] for s in figures["figure3"]}


def paper_comparison(records: Sequence[dict], paper: Mapping) -> list[dict]:
    """For each Figure 2 run (in ``records``, as :func:`figure2_records` makes them) of a method the
    paper has: our train and test bounds beside the paper's at each of :data:`COMPARED_AT` samples
    (``None`` where a curve does not reach it or lies outside the paper's panel there)."""
    runs: dict = {}
    for record in records:
        runs.setdefault((record["dataset"], record["latent_dim"], record["method"]), []).append(record)
    rows = []
    for (dataset, latent_dim, method), curve in runs.items():
        name = METHODS[method].paper
        if name is None:
            continue
        at = {samples: {} for samples in COMPARED_AT}
        for split in ("train", "test"):
            ours = [(r["samples_seen"], r[f"{split}_bound"]) for r in curve]
            theirs = paper.get(("figure2", (dataset, latent_dim), name, split), [])
            for samples in COMPARED_AT:
                at[samples][split] = value_at(ours, samples, log=True)
                at[samples][f"paper_{split}"] = value_at(theirs, samples, log=True)
        rows.append({"dataset": dataset, "latent_dim": latent_dim, "method": method, "at": at})
    return rows


def figure3_records(results: Sequence[dict], paper: Mapping) -> list[dict]:
    """The log p(x) of each Figure 3 run and split, beside the paper's at the same samples (its
    HMC-based estimate, read from its Figure 3) where the paper has that training set size."""
    records = []
    for result in results:
        job, history = result["job"], result["history"]
        for split, estimate in (result["log_likelihood"] or {}).items():
            records.append({"train_size": job.network.train_size, "method": job.method, "split": split,
                            "log_likelihood": estimate["mean"], "stderr": estimate["stderr"],
                            "particles": estimate["num_particles"], "points": estimate["num_data"],
                            "samples_seen": history[-1]["samples_seen"], "final_train_bound": history[-1]["train_elbo"],
                            "final_test_bound": history[-1]["test_elbo"], "seconds": history[-1]["seconds"],
                            "lr": job.config["lr"],
                            "paper_log_likelihood": paper_log_likelihood(paper, job.network.train_size, job.method,
                                                                         split, history[-1]["samples_seen"])})
    return records


def paper_log_likelihood(paper: Mapping, train_size: int, method: str, split: str, samples: float) -> Optional[float]:
    """The paper's Figure 3 log p(x) (:func:`paper_curves`) for a training set size, method and split
    at ``samples`` training samples; None where the paper has no such curve or it does not reach them."""
    return value_at(paper.get(("figure3", train_size, METHODS[method].paper, split), []), samples)


def plot_figure2(records: Sequence[dict], preset: Preset, path: Path, paper: Mapping) -> None:
    """One panel per (dataset, Nz): train (solid) and test (dashed) bound per method, log x-axis,
    over the paper's curves of the same method (wide and pale)."""
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
            curves = []
            for method in preset.methods:
                curve = sorted((r for r in panel if r["method"] == method), key=lambda r: r["samples_seen"])
                if not curve:
                    continue
                samples = [r["samples_seen"] for r in curve]
                for split, style in (("train", "-"), ("test", "--")):
                    curves.append([(r["samples_seen"], r[f"{split}_bound"]) for r in curve])
                    ax.plot(*zip(*curves[-1]), style, color=METHODS[method].color, linewidth=1.3)
                    theirs = [p for p in paper.get(("figure2", (dataset, latent_dim), METHODS[method].paper, split), [])
                              if p[0] <= samples[-1]]
                    if theirs:
                        ax.plot(*zip(*theirs), style, color=METHODS[method].color, linewidth=3.5, alpha=0.3)
            ax.set_xscale("log")
            ax.set_title(f"{TITLES[dataset]}, $N_z$ = {latent_dim}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            limits = panel_limits(curves)
            if limits:
                ax.set_ylim(*limits)
            if row == len(datasets) - 1:
                ax.set_xlabel("# training samples evaluated")
            if column == 0:
                ax.set_ylabel("lower bound per datapoint (nats)")
    handles = [plt.Line2D([], [], color=METHODS[m].color, label=m) for m in preset.methods]
    handles += [plt.Line2D([], [], color="k", linestyle="-", label="train"),
                plt.Line2D([], [], color="k", linestyle="--", label="test"),
                plt.Line2D([], [], color="k", linewidth=3.5, alpha=0.3, label="the paper's Figure 2")]
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def panel_limits(curves: Sequence[Sequence[Sequence[float]]]) -> Optional[tuple[float, float]]:
    """Y-limits for one panel of Figure 2 from its curves of (samples, bound) points, drawn as the
    paper draws them: the leading curve (the best at its end) over its last decade of samples,
    widened to take in every curve that ends within three times that range below the top. The early
    part of a curve, and a curve that ends further below, fall below the panel; the tables give their
    values. None without a finite point."""
    curves = [finite for finite in ([p for p in curve if math.isfinite(p[1])] for curve in curves) if finite]
    if not curves:
        return None
    top = max(value for curve in curves for _, value in curve)
    leader = max(curves, key=lambda curve: curve[-1][1])
    decade_before = min(leader, key=lambda p: abs(math.log10(10 * p[0] / leader[-1][0])))[1]
    window = max(top - decade_before, 1.0)
    low = min([decade_before] + [curve[-1][1] for curve in curves if curve[-1][1] >= top - 3 * window])
    return low - 0.05 * window, top + 0.05 * window


def plot_figure3(records: Sequence[dict], figure3: Figure3, path: Path) -> None:
    """Estimated log p(x) (train: solid, test: dashed) against the training set size, per method."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for method in figure3.methods:
        for split, style, marker in (("train", "-", "o"), ("test", "--", "s")):
            points = sorted((r for r in records if r["method"] == method and r["split"] == split),
                            key=lambda r: r["train_size"])
            if points:
                ax.errorbar([r["train_size"] for r in points], [r["log_likelihood"] for r in points],
                            yerr=[r["stderr"] for r in points], fmt=style + marker, color=METHODS[method].color,
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
    invocations = len(summary.get("invocations", []))
    again = ""
    if invocations > 1:
        unrecorded = summary["invocations_without_length"]
        again = (f" in the last of {invocations} invocations of this command, {_duration(summary['total_wall_seconds'])} "
                 f"in all" + (f" but {unrecorded} whose length was not recorded" if unrecorded else ""))
    lines = [f"Preset `{summary['preset']}`, `{summary['command']}`: {summary['wall_seconds'] / 60:.1f} min wall time{again} "
             f"on {summary['machine']['device']} ({summary['workers']} runs at a time, one CPU thread each); load average {summary['load_average_start'][0]:.1f} at the start, "
             f"{summary['load_average_end'][0]:.1f} at the end.", "",
             "| data set | Nz | method | step size | samples | train bound | test bound | seconds |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary["final"]:
        bounds = (f"{r['train_bound']:.2f} | {r['test_bound']:.2f}" if r["train_bound"] is not None else "– | –")
        note = " (diverged)" if r["error"] else ""
        lines.append(f"| {TITLES[r['dataset']]} | {r['latent_dim']} | {r['method']}{note} | {r['lr']} | "
                     f"{r['samples_seen'] or 0:.3g} | {bounds} | {r['seconds'] or 0:.0f} |")
    if summary.get("paper"):
        header = " | ".join(f"{split} at 10^{round(math.log10(samples))}: ours / paper"
                            for samples in COMPARED_AT for split in ("train", "test"))
        lines += ["", "Beside the paper's Figure 2 (its AEVB is aevb-meanfield here; values read from the vector paths of "
                  "its PDF by `benchmarks/paper_figures.py`, approximate to a line's width; – where a curve does not "
                  "reach that many samples or lies below the paper's panel):", "",
                  f"| data set | Nz | method | {header} |", "| --- | ---: | --- |" + " ---: |" * 2 * len(COMPARED_AT)]
        for r in summary["paper"]:
            cells = " | ".join(f"{_nats(r['at'][samples][split])} / {_nats(r['at'][samples][f'paper_{split}'])}"
                               for samples in COMPARED_AT for split in ("train", "test"))
            lines.append(f"| {TITLES[r['dataset']]} | {r['latent_dim']} | {r['method']} | {cells} |")
    if figure3:
        lines += ["", "| training points | method | split | log p(x) | ± stderr | K | points | train bound | test bound "
                  "| paper's log p(x) |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(figure3, key=lambda r: (r["train_size"], r["method"], r["split"])):
            lines.append(f"| {r['train_size']} | {r['method']} | {r['split']} | {r['log_likelihood']:.2f} | "
                         f"{r['stderr']:.2f} | {r['particles']} | {r['points']} | {r['final_train_bound']:.2f} | "
                         f"{r['final_test_bound']:.2f} | {_nats(r['paper_log_likelihood'])} |")
    return "\n".join(lines) + "\n"


def _nats(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}"


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=True) + "\n")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    width = max(map(len, PRESETS))
    presets = "\n".join(
        f"  {name:{width}s} {preset.about}\n   {'':{width}s}"
        + "; ".join(f"{TITLES[dataset]} Nz {', '.join(map(str, grid.latent_dims))} ({grid.hidden_dim} hidden units)"
                    for dataset, grid in preset.grids.items())
        + f"\n   {'':{width}s}{max(grid.samples for grid in preset.grids.values()):.2g} samples per run; "
          f"init std {preset.init_std}; compile {preset.compile}"
        for name, preset in PRESETS.items())
    committed = ", ".join(f"{name}: {folder.relative_to(RESULTS.parent.parent)}/" for name, folder in COMMITTED_PRESETS.items())
    epilog = f"""presets:
{presets}

where results go:
  a committed preset writes to its folder in benchmarks/results/ ({committed}); any other
  preset to runs/benchmarks/PRESET/ under the working directory. --out DIR writes to DIR instead.
  Files that exist in benchmarks/results/ are replaced only with --overwrite: without it the
  benchmark stops before training anything. A committed preset's run directories are committed
  too, without their checkpoints and plots: a fresh clone continues where the last commit left.

stopping and continuing:
  every run, pilots included, has its own run directory under --runs-dir. Given the same command
  again, a stopped benchmark continues: runs that finished are read back, a run with a checkpoint
  continues from it (bit-exact on the same device type), and a run that stopped before its first
  checkpoint starts again. A run directory written with other settings (another preset or seed)
  is refused. After each run a line says how many runs are done, running and left, and about how
  long the rest takes. --hours H starts only the runs expected to end within H hours of the start,
  then stops with status 75.

outputs (in the results folder):
  {', '.join(OUTPUTS)}
"""
    parser = argparse.ArgumentParser(description="AEVB versus wake-sleep: the AEVB paper's Figures 2 and 3.",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu", help="(default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: %(default)s)")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    parser.add_argument("--out", help="folder for results and figures (default: a committed preset's folder in "
                                      "benchmarks/results/, else runs/benchmarks/PRESET/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in benchmarks/results/")
    parser.add_argument("--runs-dir", help="folder of the run directories, where a stopped benchmark continues "
                                           "(default: OUT/runs/PRESET/)")
    parser.add_argument("--workers", type=int, default=0,
                        help="runs at a time, each in its own process (default: the CPU cores; 4 on a GPU)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--hours", type=float, help="start only runs expected to end within this many hours of the "
                                                    "start, then stop (status 75); the same command continues")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        benchmark(args, argv)
    except PyroVAEError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"stopped by {signal.Signals(stop.signal_number).name}: give the same command to continue",
              file=sys.stderr)
        return 128 + stop.signal_number
    except OutOfTime as stop:
        print(f"stopped at the time limit with {stop.runs_left} runs left, none of which would end within it: "
              "give the same command to continue", file=sys.stderr)
        return EXIT_OUT_OF_TIME
    return 0


def output_folder(preset: str, out: Optional[str]) -> Path:
    """``out``, else a committed preset's folder in benchmarks/results/, else its scratch folder."""
    if out is not None:
        return Path(out)
    return COMMITTED_PRESETS.get(preset, SCRATCH / preset)


def benchmark(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Pilots, then every run of the preset; writes results and figures to its output folder."""
    preset = PRESETS[args.preset]
    out = output_folder(args.preset, args.out)
    refuse_to_replace([out / name for name in OUTPUTS], args.overwrite)
    device = resolve_device(args.device)
    cores = os.cpu_count() or 1
    workers = args.workers or (4 if device.type == "cuda" else cores)
    if workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    if args.hours is not None and not args.hours > 0:
        raise ConfigError(f"--hours must be positive, got {args.hours}")
    runs = Path(args.runs_dir) if args.runs_dir else out / "runs" / args.preset
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"results to {out.resolve()}, run directories in {runs.resolve()}", flush=True)
    setting = Setting(device.type, args.data_dir, args.seed, runs)
    command = "python benchmarks/aevb_vs_wake_sleep.py " + shlex.join(argv)
    with logged_invocation(runs / "invocations.json", command) as invocations:
        start, load_start = time.perf_counter(), os.getloadavg()

        figure3 = figure3_networks(preset.figure3, setting)
        progress = Progress(workers, start)
        # The runs after the pilots, at any step size: their cost is part of the time left during the pilots.
        later = experiment_jobs(preset, figure3, defaultdict(lambda: LEARNING_RATES[0]), setting)
        deadline = None if args.hours is None else start + 3600 * args.hours
        lrs, scores = choose_learning_rates(run_jobs(pilot_jobs(preset, figure3, setting), workers, progress, later,
                                                     deadline))
        results = run_jobs(experiment_jobs(preset, figure3, lrs, setting), workers, progress, deadline=deadline)
        figure2 = [r for r in results if r["job"].kind == "figure2"]
        records = figure2_records(figure2)
        paper = paper_curves()
        figure3_results = figure3_records([r for r in results if r["job"].kind == "figure3"], paper)

        wall_seconds = time.perf_counter() - start
        total, unrecorded = total_wall_seconds(invocations, wall_seconds)
        summary = {"preset": args.preset, "command": command, "wall_seconds": wall_seconds,
                   "total_wall_seconds": total, "invocations_without_length": unrecorded,
                   "invocations": invocations, "workers": workers,
                   "load_average_start": load_start, "load_average_end": os.getloadavg(),
                   "machine": {"device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
                               "cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
                               "torch": torch.__version__, "pyro": pyro.__version__},
                   "preset_settings": asdict(preset),
                   "learning_rates": {f"{group}/{method}": lr for (group, method), lr in lrs.items()},
                   "pilot_scores": {f"{group}/{method}": {lr: score if math.isfinite(score) else None
                                                          for lr, score in by_lr.items()}
                                    for (group, method), by_lr in scores.items()},
                   "final": final_records(figure2), "paper": paper_comparison(records, paper)}
        write_json(out / "aevb_vs_wake_sleep.json", records)
        write_json(out / "aevb_vs_wake_sleep_summary.json", summary)
        write_json(out / "figure3.json", {
            "estimator": "importance sampling with the model's encoder as proposal: log (1/K) sum_k p(x, z_k) / q(z_k|x), "
                         "z_k ~ q(z|x); a stochastic lower bound on log p(x) that tightens as K grows",
            "records": figure3_results})
        (out / "aevb_vs_wake_sleep.md").write_text(markdown(summary, figure3_results))
        plot_figure2(records, preset, out / "aevb_vs_wake_sleep.png", paper)
        if figure3_results:
            plot_figure3(figure3_results, preset.figure3, out / "figure3.png")
        print(markdown(summary, figure3_results), flush=True)


@contextmanager
def logged_invocation(path: Path, command: str) -> Iterator[list]:
    """Append this invocation to the list in ``path`` (one entry per start of the benchmark) when it
    starts, with its ``command``; when it ends, add its wall ``seconds`` and how it ``ended``. Yields the list."""
    invocations = json.loads(path.read_text()) if path.exists() else []
    entry = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
    invocations.append(entry)
    write_json(path, invocations)
    start, ended = time.perf_counter(), "failed"
    try:
        yield invocations
        ended = "complete"
    except OutOfTime:
        ended = "out of time"
        raise
    except Stopped as stop:
        ended = f"stopped by {signal.Signals(stop.signal_number).name}"
        raise
    finally:
        entry.update(seconds=round(time.perf_counter() - start, 1), ended=ended)
        write_json(path, invocations)


def total_wall_seconds(invocations: Sequence[dict], seconds: float) -> tuple[float, int]:
    """The wall seconds of every invocation, the last one's being ``seconds``, and how many earlier
    invocations have no recorded length (they are not in the sum)."""
    earlier = invocations[:-1]
    return seconds + sum(entry["seconds"] for entry in earlier if "seconds" in entry), \
        sum("seconds" not in entry for entry in earlier)


if __name__ == "__main__":
    sys.exit(main())
