"""What a run's checkpoint holds, and how a resumed run is put back as it was.

``checkpoint.pt`` (written atomically, read without running code: :mod:`pyro_vae.checkpoint`)
holds the configuration and the model's recipe, the model's and optimizer's states (the model's
``pyro.param`` sites included, :mod:`pyro_vae.param_sites`), the history, every process's random
states (the global torch generator that Pyro samples from, per process) and the generator of
minibatch order and binarization draws, the callbacks' states, and, for a run stopped inside an
epoch, where: the step, the minibatch cycles and the loss summed so far. On the same device type
and number of processes a resumed run ends exactly as an uninterrupted one would.
"""

import platform
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pyro
import torch

from .callbacks import State
from .checkpoint import save_checkpoint, write_json
from .config import TrainConfig
from .distributed import Processes
from .errors import ConfigError

#: The random streams of the other processes of a distributed run start here (per rank) when fresh.
RANK_SEED_STRIDE = 7919


def seed_other_ranks(config: TrainConfig, processes: Processes) -> None:
    """Give each process but the first its own draws of z (the data generator stays shared)."""
    if processes.rank > 0:
        pyro.set_rng_seed(config.seed + RANK_SEED_STRIDE * processes.rank + 1)


def save(path: Path, state: State, run: dict, generator: torch.Generator, processes: Processes,
         position: Optional[dict], callbacks: list) -> None:
    """Write ``path``: ``run`` (configuration, recipe, data facts) and ``state`` as they are now; every
    process takes part (its random states are gathered), the main process writes."""
    device = generator.device
    random_states = processes.gather({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device)
                                      if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)})
    if not processes.main:
        return
    payload = {**run, "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
               "epoch": state.epoch - 1 if position else state.epoch, "samples_seen": state.samples_seen,
               "history": state.history, "seconds": state.seconds, "step": state.step,
               "rng": {**random_states[0], "generator": generator.get_state(), "ranks": random_states},
               "callbacks": [callback.state_dict() if hasattr(callback, "state_dict") else None
                             for callback in callbacks]}
    if position:
        payload["position"] = position
    save_checkpoint(path, payload)


def environment(device: torch.device) -> dict:
    """Versions and device, recorded with every run for reproducibility."""
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "torchvision": torchvision.__version__, "device": str(device), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def begin(out: Path, facts: dict, config: TrainConfig, processes: Processes, device: torch.device) -> None:
    """A new run: its ``config.json`` (configuration, recipe, versions and device), and the other
    processes' own random streams."""
    if processes.main:
        write_json(out / "config.json", {"config": facts["config"], "recipe": facts["recipe"],
                                         "environment": environment(device)})
    seed_other_ranks(config, processes)


def run_facts(config: TrainConfig, recipe: Optional[dict], in_memory: bool, device: torch.device,
              processes: Processes, num_data: int) -> dict:
    """What a checkpoint records of the run besides its state (``num_data``: training datapoints)."""
    return {"config": asdict(config), "recipe": recipe, "data_in_memory": in_memory, "num_data": num_data,
            "device_type": device.type, "world_size": processes.world_size}


def restore(checkpoint: dict, state: State, generator: torch.Generator, processes: Processes,
            callbacks: list) -> Optional[dict]:
    """Put model, optimizer, counters, callbacks and this process's random states back as ``checkpoint``
    recorded them; returns where a stopped epoch was (or None)."""
    device = generator.device
    if checkpoint.get("device_type") != device.type:
        raise ConfigError(f"the checkpoint was written on {checkpoint.get('device_type')}: resume it with "
                          f"--device {checkpoint.get('device_type')} to continue the same random streams")
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ConfigError(f"the checkpoint does not fit its own configuration ({error}): it was edited or "
                          "written by another version") from None
    position = checkpoint.get("position")
    state.history, state.samples_seen = checkpoint["history"], checkpoint["samples_seen"]
    state.epoch = checkpoint["epoch"] + 1
    state.seconds = checkpoint.get("seconds", state.history[-1]["seconds"] if state.history else 0.0)
    state.step = checkpoint.get("step", checkpoint["epoch"] * state.steps_per_epoch
                                + (position["step"] if position else 0))
    for callback, saved in zip(callbacks, checkpoint.get("callbacks", [])):
        if saved is not None and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(saved)
    _restore_random_states(checkpoint, generator, processes)
    return position


def _restore_random_states(checkpoint: dict, generator: torch.Generator, processes: Processes) -> None:
    device = generator.device
    ranks = checkpoint["rng"].get("ranks", [checkpoint["rng"]])
    if processes.rank < len(ranks):
        torch.set_rng_state(ranks[processes.rank]["torch"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(ranks[processes.rank]["cuda"], device)
    else:  # more processes than wrote the checkpoint: the newcomers draw fresh streams
        seed_other_ranks(TrainConfig.from_dict(checkpoint["config"]), processes)
    if len(ranks) != processes.world_size and processes.main:
        warnings.warn(f"the checkpoint was written by {len(ranks)} process(es) and is resumed by "
                      f"{processes.world_size}: the run continues, but not with the same random draws", RuntimeWarning)
    generator.set_state(checkpoint["rng"]["generator"])
