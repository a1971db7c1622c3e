import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from torchvision.datasets import MNIST

from pyro_vae.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_end_to_end_mnist_train_and_evaluate(tmp_path, data_dir):
    """A few hundred steps on MNIST through the command line, then an evaluation of the run."""
    out = tmp_path / "mnist"
    result = run_cli("train", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1",
                     "--batch-size", "200", "--latent-dim", "2", "--hidden-dim", "64",
                     "--eval-particles", "10", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "test ELBO" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples_seen"] == 60000 and -250 < metrics["test_elbo"] < -120
    assert (out / "manifold.png").stat().st_size > 10_000
    result = run_cli("evaluate", str(out), "--particles", "10", "--quiet")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["test_log_likelihood"]["num_particles"] == 10
    assert evaluation["test_log_likelihood"]["num_data"] == 10000
    assert evaluation["test_log_likelihood"]["mean"] > evaluation["test_elbo"]["mean"]


def one_line_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--dataset", "cifar"], ["unknown dataset 'cifar'", "frey-face, mnist"]),
    (["train", "--latent-dim", "0"], ["--latent-dim", "positive integer"]),
    (["train", "--hidden-dim", "-5"], ["positive integer"]),
    (["train", "--batch-size", "ten"], ["not an integer"]),
    (["train", "--lr", "-1"], ["positive number"]),
    (["train", "--objective", "iwae", "--particles", "1"], ["2 particles"]),
    (["train", "--batch-size", "100000", "--epochs", "1"], ["batch-size", "exceeds"]),
    (["train", "--likelihood", "bernoulli", "--binarize", "none"], ["not binary", "--binarize"]),
    (["train", "--model", "m2", "--labelled-weight", "0"], ["--labelled-weight", "positive number"]),
    (["train", "--labelled-weight", "2", "--epochs", "1"], ["takes no argument labelled_weight", "it takes"]),
    (["train", "--model", "no_such_package.models:vamp"], ["cannot import no_such_package.models"]),
    (["train", "--model", "pyro_vae.models:no_such_factory"], ["has no 'no_such_factory'"]),
    (["train", "--model", "nonsense"], ["unknown model", "import path"]),
    (["train", "--model-arg", "latent"], ["KEY=VALUE"]),
    (["train", "--model-arg", "frobnicate=3"], ["takes no argument frobnicate"]),
    (["train", "--dataset", "images.csv"], ["unknown dataset", ".npz"]),
    (["train", "--dataset", "missing.npz"], ["no such file"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["required"]),
])
def test_bad_arguments_give_one_line_and_status_2(capsys, tmp_path, argv, fragments):
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "run")] if argv[:1] == ["train"] else argv, *fragments)


@pytest.mark.parametrize("extra, flag", [(["--model-arg", "components=3"], "--model-arg"),
                                         (["--labels-per-class", "5"], "--labels-per-class"),
                                         (["--overwrite"], "--overwrite"), (["--latent-dim", "3"], "--latent-dim")])
def test_resume_refuses_options_that_would_change_the_run(capsys, tmp_path, extra, flag):
    one_line_error(capsys, ["train", "--resume", str(tmp_path), *extra], "--resume takes its configuration", flag)


def test_missing_mnist_without_network(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")],
                   "could not be downloaded", "--data-dir")


def test_corrupt_frey_face_file(capsys, tmp_path):
    (tmp_path / "frey_rawface.mat").write_bytes(b"\x01\x02 not matlab")
    one_line_error(capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")], "frey_rawface.mat")
    scipy.io.savemat(str(tmp_path / "frey_rawface.mat"), {"ff": np.zeros((100, 40), dtype=np.uint8)})
    one_line_error(capsys, ["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")], "has shape")


def test_evaluate_a_folder_that_is_no_run(capsys, tmp_path):
    one_line_error(capsys, ["evaluate", str(tmp_path)], "no checkpoint")
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    one_line_error(capsys, ["evaluate", str(tmp_path)], "corrupt")


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = run_cli("train", "--epochs", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_compares_two_runs_image_by_image(capsys, tmp_path, data_dir):
    from pyro_vae import TrainConfig, train

    def tiny(name, **options):
        config = TrainConfig(latent_dim=2, hidden_dims=[16], epochs=3, eval_particles=2, out=str(tmp_path / name),
                             device="cpu", **options)
        return train(config, progress=False).out

    a, b = tiny("a"), tiny("b", seed=1)
    assert main(["evaluate", str(a), "--compare", str(b), "--particles", "20", "--quiet"]) == 0
    result = json.loads((a / "evaluation.json").read_text())
    ours, theirs, difference = (result["test_log_likelihood"], result["compared_with"]["test_log_likelihood"],
                                result["compared_with"]["difference"])
    assert difference["mean"] == pytest.approx(ours["mean"] - theirs["mean"], abs=1e-9)
    # Pairing by image removes the spread between faces that both models share.
    assert difference["stderr"] < 0.5 * min(ours["stderr"], theirs["stderr"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_log_likelihood_difference"] == \
        pytest.approx(difference["mean"])
    # A run against itself with the same seed: the same draws for every image, a difference of exactly 0.
    assert main(["evaluate", str(a), "--compare", str(a), "--particles", "5", "--quiet"]) == 0
    assert json.loads((a / "evaluation.json").read_text())["compared_with"]["difference"] == \
        {"mean": 0.0, "stderr": 0.0, "num_particles": 5, "num_data": 200}
    mnist = tiny("mnist", dataset="mnist", data_dir=str(data_dir), train_size=200, batch_size=100)
    one_line_error(capsys, ["evaluate", str(a), "--compare", str(mnist), "--particles", "2"], "test images differ")
