"""A run folder is data: opening one someone else wrote imports and calls nothing the user did not
name or trust (pyro_vae.recipes.check_recipe, pyro_vae.trust), and everything else opens as before."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import CheckpointError, ConfigError, TrainConfig, load_run, train, trust
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.cli import main

from test_cli import one_line_error

TESTS = Path(__file__).resolve().parent
TINY = dict(dataset="frey-face", latent_dim=2, hidden_dims=[8], epochs=1, batch_size=100, eval_particles=2,
            device="cpu", train_size=300)
COLLEAGUE_MODULE = '''
from pyro_vae.models import vae


def build(data_dim, latent_dim, hidden_dims, likelihood, activation):
    return vae(data_dim, latent_dim, hidden_dims, likelihood, activation)
'''


@pytest.fixture
def fresh_user(tmp_path, monkeypatch):
    """A user who has trained with nothing and trusted nothing yet."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(trust, "_remembered_now", set())


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A tiny run of the built-in vae."""
    out = tmp_path_factory.mktemp("runs") / "own"
    train(TrainConfig(**TINY, out=str(out)), progress=False)
    return out


def foreign_copy(run: Path, folder: Path, recipe=None, **config) -> Path:
    """A copy of ``run`` whose recipe and configuration someone else rewrote, in checkpoint and config.json."""
    shutil.copytree(run, folder)
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    written = json.loads((folder / "config.json").read_text())
    for state in (checkpoint, written):
        state["recipe"] = recipe if recipe is not None else state["recipe"]
        state["config"].update(config)
    save_checkpoint(folder / "checkpoint.pt", {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    (folder / "config.json").write_text(json.dumps(written, default=str))
    return folder


def attacks(marker: Path) -> dict:
    """Recipes that would run a command creating ``marker`` if they were imported and called."""
    shell = {"factory": "subprocess:run", "kwargs": {"args": f"touch {marker}", "shell": True}}
    return {
        "subprocess": shell,
        "os.system": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}},
        "builtins.exec": {"factory": "builtins:exec", "kwargs": {"source": f"open({str(marker)!r}, 'w').close()"}},
        "through a pyro_vae module": {"factory": "pyro_vae.checkpoint:os.system",
                                      "kwargs": {"command": f"touch {marker}"}},
        "nested M1 of an m1m2 run": {"factory": "pyro_vae.models:m1m2", "kwargs": {"m1": shell}},
        "a module of the run folder": {"factory": "planted:build", "kwargs": {}},
    }


ATTACKS = list(attacks(Path("marker")))


def plant(folder: Path, marker: Path) -> None:
    """A module ``planted`` in the run folder that creates ``marker`` when it is imported."""
    (folder / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(): pass\n")


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_foreign_recipe_is_refused_in_one_line_before_anything_runs(attack, own_run, tmp_path, capsys,
                                                                      monkeypatch, fresh_user):
    marker = tmp_path / "pwned"
    foreign = foreign_copy(own_run, tmp_path / "foreign", attacks(marker)[attack])
    plant(foreign, marker)
    monkeypatch.syspath_prepend(str(foreign))  # as a command started in the folder finds it
    fragments = ("names the model factory", "--trust-recipe")
    one_line_error(capsys, ["evaluate", str(foreign), "--particles", "2", "--quiet"], *fragments)
    one_line_error(capsys, ["train", "--resume", str(foreign), "--epochs", "2", "--quiet"], *fragments)
    one_line_error(capsys, ["evaluate", str(own_run), "--compare", str(foreign), "--particles", "2", "--quiet"],
                   *fragments)
    with pytest.raises(CheckpointError, match="names the model factory"):
        load_run(foreign)
    assert not marker.exists()
    assert "planted" not in sys.modules


def test_a_module_of_a_trusted_name_found_elsewhere_is_not_trusted(own_run, tmp_path, capsys, monkeypatch):
    """A run folder shipping its own ``user_models.py`` does not borrow the trust of the tests' user_models."""
    from pyro_vae import recipes

    recipes.name_factory("user_models:plain_vae")  # trusted, as found in tests/
    marker = tmp_path / "pwned"
    foreign = foreign_copy(own_run, tmp_path / "foreign", {"factory": "user_models:plain_vae",
                                                           "kwargs": {"data_dim": 560}})
    (foreign / "user_models.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef plain_vae(data_dim): pass\n")
    monkeypatch.syspath_prepend(str(foreign))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    one_line_error(capsys, ["evaluate", str(foreign), "--particles", "2", "--quiet"], str(foreign / "user_models.py"))
    assert not marker.exists()


def test_arguments_that_are_not_plain_json_are_refused(own_run, tmp_path):
    foreign = foreign_copy(own_run, tmp_path / "foreign")
    checkpoint = load_checkpoint(foreign / "checkpoint.pt")
    checkpoint["recipe"]["kwargs"]["hidden_dims"] = torch.tensor([8])
    save_checkpoint(foreign / "checkpoint.pt", {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="not plain JSON values"):
        load_run(foreign)


def test_a_foreign_configuration_or_data_file_runs_nothing(own_run, tmp_path, capsys, monkeypatch):
    """The configuration's model name is never imported, and its data file is read as data only."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"train": Payload(), "test": torch.zeros(2, 4)}, tmp_path / "data.pt")
    foreign = foreign_copy(own_run, tmp_path / "foreign", model="planted:build", dataset=str(tmp_path / "data.pt"))
    plant(foreign, marker)
    monkeypatch.syspath_prepend(str(foreign))
    one_line_error(capsys, ["evaluate", str(foreign), "--particles", "2", "--quiet"], "data.pt", "not read")
    one_line_error(capsys, ["train", "--resume", str(foreign), "--epochs", "2", "--quiet"], "data.pt", "not read")
    assert not marker.exists()


def test_a_trusted_factory_is_not_called_with_arguments_it_does_not_take(tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "colleague_models.py").write_text(COLLEAGUE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    train(TrainConfig(**TINY, model="colleague_models:build", out=str(tmp_path / "run")), progress=False)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    checkpoint["recipe"]["kwargs"]["command"] = "touch pwned"
    save_checkpoint(tmp_path / "run" / "checkpoint.pt",
                    {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    with pytest.raises(ConfigError, match="cannot be built with .*unexpected keyword argument 'command'"):
        load_run(tmp_path / "run")


def test_a_colleagues_run_opens_once_trusted_and_then_without_the_flag(tmp_path, monkeypatch, capsys):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "colleague_models.py").write_text(COLLEAGUE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    train(TrainConfig(**TINY, model="colleague_models:build", out=str(tmp_path / "run")), progress=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))  # the run reaches another user
    monkeypatch.setattr(trust, "_remembered_now", set())
    with pytest.raises(CheckpointError, match="colleague_models:build .*--trust-recipe"):
        load_run(tmp_path / "run")
    one_line_error(capsys, ["evaluate", str(tmp_path / "run"), "--particles", "2", "--quiet"], "colleague_models")
    model, _, _ = load_run(tmp_path / "run", trust_recipe=True)
    assert type(model).__name__ == "VAE"
    monkeypatch.setattr(trust, "_remembered_now", set())  # a later process: the file remembers it
    assert main(["evaluate", str(tmp_path / "run"), "--particles", "2", "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--quiet"]) == 0


def test_the_trust_flag_opens_a_foreign_run_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "colleague_models.py").write_text(COLLEAGUE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    train(TrainConfig(**TINY, model="colleague_models:build", out=str(tmp_path / "run")), progress=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    monkeypatch.setattr(trust, "_remembered_now", set())
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--trust-recipe", "--quiet"]) == 0
    assert "colleague_models:build" in trust.trust_file().read_text()


def test_the_users_own_run_opens_from_another_working_directory(tmp_path):
    """Trained in one folder with the user's module on the path, evaluated from another: no flag needed."""
    (tmp_path / "project").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "project" / "my_models.py").write_text(COLLEAGUE_MODULE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path / "project")}
    common = dict(capture_output=True, text=True, env=env)
    trained = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--model", "my_models:build",
                              "--latent-dim", "2", "--hidden-dim", "8", "--epochs", "1", "--train-size", "300",
                              "--eval-particles", "2", "--device", "cpu", "--out", "run", "--quiet"],
                             cwd=tmp_path / "project", **common)
    assert trained.returncode == 0, trained.stderr
    evaluated = subprocess.run([sys.executable, "-m", "pyro_vae", "evaluate", str(tmp_path / "project" / "run"),
                                "--particles", "2", "--quiet"], cwd=tmp_path / "elsewhere", **common)
    assert evaluated.returncode == 0, evaluated.stderr


def test_built_in_and_entry_point_runs_open_with_nothing_remembered(own_run, tmp_path, monkeypatch, fresh_user):
    from importlib.metadata import EntryPoint

    from pyro_vae import recipes

    model, _, _ = load_run(own_run)
    assert type(model).__name__ == "VAE"
    foreign = foreign_copy(own_run, tmp_path / "plugin", {"factory": "user_models:plain_vae",
                                                          "kwargs": {"data_dim": 560}})
    with pytest.raises(CheckpointError, match="user_models:plain_vae"):
        load_run(foreign, model=None)
    registered = [EntryPoint(name="plain", value="user_models:plain_vae", group=recipes.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(recipes, "entry_points", lambda group: registered if group == recipes.ENTRY_POINT_GROUP else [])
    with pytest.raises(CheckpointError, match="weights do not fit"):  # built and called: the package is installed
        load_run(foreign)


def test_arguments_given_as_tuples_are_recorded_as_json_and_the_run_opens(tmp_path):
    """A recipe is kept as JSON holds it (a tuple as a list), so the user's own run passes check_recipe."""
    from pyro_vae import ImageData, fit, load_dataset

    frey = load_dataset("frey-face")
    small = ImageData("small", frey.train[:100], frey.test[:20], frey.image_shape)
    run = fit("user_models:mixture_vae", small, model_args={"hidden_dims": (8, 8)}, out=tmp_path / "r", epochs=1,
              batch_size=50, eval_particles=2, device="cpu", progress=False, objective="trace")
    assert run.metrics["recipe"]["kwargs"]["hidden_dims"] == [8, 8]
    model, _, _ = load_run(tmp_path / "r")
    assert type(model).__name__ == "MixturePriorVAE"
