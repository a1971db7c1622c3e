"""The TensorBoard and MLflow callbacks: their hooks driven by hand and read back with each tool's own
reader, then one run of each through fit()."""

import sys
import time

import pytest
import torch

import pyro_vae
from pyro_vae import ConfigError, TrainConfig
from pyro_vae.callbacks import State

IMAGE_SHAPE = (28, 20)
STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 2, 50


def records(epochs: int = EPOCHS) -> list:
    """A history as the engine writes it, with made-up figures."""
    return [{"epoch": epoch, "samples_seen": epoch * STEPS_PER_EPOCH * BATCH, "train_elbo": -300.0 + 10 * epoch,
             "test_elbo": -310.0 + 9 * epoch, "seconds": 2.0 * epoch} for epoch in range(1, epochs + 1)]


METRICS = {"train_elbo": -280.0, "test_elbo": -292.0, "test_log_likelihood": -285.5, "test_log_likelihood_stderr": 0.7,
           "test_log_likelihood_particles": 2, "scoring": "exact", "samples_seen": 400, "pictures_skipped": [],
           "config": {"lr": 0.001}}


def make_state(tmp_path) -> State:
    model = pyro_vae.build_vae(IMAGE_SHAPE[0] * IMAGE_SHAPE[1], 2, [8], "gaussian", "tanh")
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=1e-3, model_args={"beta": 2.0})
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    return State(model, torch.optim.Adam(model.parameters(), lr=1e-3), config, out, STEPS_PER_EPOCH)


def drive(callback, state: State) -> list:
    """Every hook as the engine calls it, over two epochs of 4 steps of 50 datapoints, 0.5 s each."""
    history = records()
    callback.on_fit_start(state)
    for step in range(1, EPOCHS * STEPS_PER_EPOCH + 1):
        state.step, state.epoch = step, (step - 1) // STEPS_PER_EPOCH + 1
        state.loss, state.grad_norm = torch.tensor(1000.0 + step), torch.tensor(float(step))
        state.samples_seen, state.seconds = step * BATCH, step * 0.5
        callback.on_step_end(state)
        if step % STEPS_PER_EPOCH == 0:
            state.history.append(history[state.epoch - 1])
            callback.on_evaluation(state, history[state.epoch - 1])
    state.metrics = dict(METRICS)
    callback.on_fit_end(state)
    return history


# TensorBoard

def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def series(events, tag: str) -> list:
    return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]


def test_tensorboard_logs_steps_evaluations_and_final_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    state = make_state(tmp_path)
    history = drive(TensorBoard(tmp_path / "tb", every=2), state)
    events = read_events(tmp_path / "tb")
    assert series(events, "loss/minibatch") == [(step, 1000.0 + step) for step in (2, 4, 6, 8)]
    assert series(events, "gradient/norm") == [(step, float(step)) for step in (2, 4, 6, 8)]
    assert series(events, "optimizer/lr") == [(step, 1e-3) for step in (2, 4, 6, 8)]
    assert series(events, "speed/samples_per_second") == [(step, 100.0) for step in (2, 4, 6, 8)]
    evaluated = [STEPS_PER_EPOCH * record["epoch"] for record in history]
    assert series(events, "elbo/test") == [(s, r["test_elbo"]) for s, r in zip(evaluated, history)]
    assert series(events, "elbo/train") == [(s, r["train_elbo"]) for s, r in zip(evaluated, history)]
    assert series(events, "final/test_log_likelihood") == [(8, METRICS["test_log_likelihood"])]
    assert "final/scoring" not in events.Tags()["scalars"]
    assert events.Tags()["images"] == []  # no image shape: no pictures


def test_tensorboard_logs_the_settings_as_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from pyro_vae.callbacks.tensorboard import TensorBoard

    drive(TensorBoard(tmp_path / "tb"), make_state(tmp_path))
    content = read_events(tmp_path / "tb").PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["batch_size"].number_value == BATCH
    assert start.hparams["model_args"].string_value == "{'beta': 2.0}"
    assert "hidden_dims" not in start.hparams  # None: left out
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/test_log_likelihood" in [info.name.tag for info in experiment.metric_infos]


def test_tensorboard_draws_samples_and_reconstructions(tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    images = torch.rand(5, *IMAGE_SHAPE)
    drive(TensorBoard(tmp_path / "tb", images=images), make_state(tmp_path))
    events = read_events(tmp_path / "tb")
    assert sorted(events.Tags()["images"]) == ["reconstructions", "samples"]
    samples, reconstructions = events.Images("samples"), events.Images("reconstructions")
    assert [image.step for image in samples] == [4, 8]
    grid = 8 * (IMAGE_SHAPE[0] + 1) + 1, 8 * (IMAGE_SHAPE[1] + 1) + 1  # image_grid's padding of 1
    assert (samples[0].height, samples[0].width) == grid
    assert (reconstructions[0].height, reconstructions[0].width) == (2 * 29 + 1, 5 * 21 + 1)


def test_tensorboard_samples_only_for_a_model_that_generates(tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    state = make_state(tmp_path)
    state.model.generate = None  # as a model without the method
    drive(TensorBoard(tmp_path / "tb", images=torch.rand(3, *IMAGE_SHAPE)), state)
    assert read_events(tmp_path / "tb").Tags()["images"] == ["reconstructions"]
    assert state.model.training  # the pictures are drawn in eval mode, and the mode put back


def test_tensorboard_resumed_run_drops_events_from_the_resumed_step_on(tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    drive(TensorBoard(tmp_path / "tb", every=1), make_state(tmp_path))
    time.sleep(1.01 - time.time() % 1.0)  # event files are read in the order of their names: by the second
    resumed = TensorBoard(tmp_path / "tb", every=1)
    state = make_state(tmp_path)
    state.step, state.samples_seen, state.seconds = 4, 4 * BATCH, 2.0
    resumed.on_fit_start(state)
    state.step, state.samples_seen, state.seconds, state.loss = 5, 5 * BATCH, 3.0, torch.tensor(1.0)
    resumed.on_step_end(state)
    resumed.on_fit_end(state)
    events = read_events(tmp_path / "tb")
    assert [step for step, _ in series(events, "loss/minibatch")] == [1, 2, 3, 5]
    assert series(events, "speed/samples_per_second")[-1] == (5, BATCH / 1.0)  # counted from the resumed step


def test_tensorboard_refuses_images_it_cannot_shape(tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    with pytest.raises(ConfigError, match="image_shape=\\(height, width\\)"):
        TensorBoard(tmp_path, images=torch.rand(3, 560))
    with pytest.raises(ConfigError, match="does not hold the images' 560 pixels"):
        TensorBoard(tmp_path, images=torch.rand(3, 560), image_shape=(28, 28))
    with pytest.raises(ConfigError, match="every=0"):
        TensorBoard(tmp_path, every=0)


def test_tensorboard_missing_says_what_to_install(tmp_path, monkeypatch):
    from pyro_vae.callbacks.tensorboard import TensorBoard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        TensorBoard(tmp_path)


# MLflow

@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A local MLflow store in tmp_path (MLflow 3 opens file stores only when this is set)."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def run_folder_files(state: State) -> None:
    for name in ("config.json", "history.json", "metrics.json", "samples.png", "checkpoint.pt"):
        (state.out / name).write_bytes(b"{}")


def only_run(store: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    return client, run


@pytest.mark.parametrize("artifacts, checkpoint", [("results", False), ("all", True)])
def test_mlflow_logs_settings_evaluations_final_figures_and_files(store, tmp_path, artifacts, checkpoint):
    from pyro_vae.callbacks.mlflow import MLflow

    state = make_state(tmp_path)
    run_folder_files(state)
    history = drive(MLflow(store, experiment="tiny", run_name="first", artifacts=artifacts), state)
    client, run = only_run(store)
    assert (run.info.run_name, run.info.status) == ("first", "FINISHED")
    assert run.data.params["lr"] == "0.001"
    assert run.data.params["model_args.beta"] == "2.0"
    assert run.data.params["hidden_dims"] == "None"
    assert run.data.tags["pyro_vae.out"] == str(state.out)
    evaluated = [STEPS_PER_EPOCH * record["epoch"] for record in history]
    for key in ("train_elbo", "test_elbo"):
        logged = [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, key)]
        assert logged == [(step, record[key]) for step, record in zip(evaluated, history)]
    assert run.data.metrics["test_log_likelihood"] == METRICS["test_log_likelihood"]
    assert run.data.metrics["samples_seen"] == METRICS["samples_seen"]  # a record's key, but not an evaluation's figure
    assert "scoring" not in run.data.metrics and "epoch" not in run.data.metrics
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert names == {"config.json", "history.json", "metrics.json", "samples.png"} | ({"checkpoint.pt"} if checkpoint
                                                                                         else set())


def test_mlflow_refuses_bad_options_in_one_line(store):
    from pyro_vae.callbacks.mlflow import MLflow

    with pytest.raises(ConfigError, match="artifacts='some'"):
        MLflow(store, artifacts="some")
    with pytest.raises(ConfigError, match="cannot open the tracking store nowhere://x") as error:
        MLflow("nowhere://x")
    assert "\n" not in str(error.value)


def test_mlflow_missing_says_what_to_install(monkeypatch):
    from pyro_vae.callbacks.mlflow import MLflow

    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(ConfigError, match="pip install mlflow-skinny"):
        MLflow()


# Through fit()

@pytest.fixture(scope="module")
def small_data():
    frey = pyro_vae.load_dataset("frey-face")
    return pyro_vae.ImageData("small", frey.train[:200], frey.test[:40], frey.image_shape)


def fit_small(data, callback, tmp_path):
    model = pyro_vae.build_vae(560, 2, [8], "gaussian", "tanh")
    return pyro_vae.fit(model, data, callbacks=[callback], epochs=2, batch_size=50, eval_particles=2, device="cpu",
                        progress=False, out=tmp_path / "run")


def test_tensorboard_through_fit(small_data, tmp_path):
    pytest.importorskip("tensorboard")
    from pyro_vae.callbacks.tensorboard import TensorBoard

    run = fit_small(small_data, TensorBoard(tmp_path / "tb", every=1, image_shape=small_data.image_shape), tmp_path)
    events = read_events(tmp_path / "tb")
    assert [value for _, value in series(events, "elbo/test")] == [record["test_elbo"] for record in run.history]
    assert [step for step, _ in series(events, "loss/minibatch")] == list(range(1, 9))
    assert series(events, "final/test_log_likelihood")[0][1] == run.metrics["test_log_likelihood"]
    assert [image.step for image in events.Images("samples")] == [4, 8]


def test_mlflow_through_fit(small_data, store, tmp_path):
    from pyro_vae.callbacks.mlflow import MLflow

    run = fit_small(small_data, MLflow(store, experiment="tiny"), tmp_path)
    client, logged = only_run(store)
    assert logged.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "test_elbo")
    assert [metric.value for metric in history] == pytest.approx([record["test_elbo"] for record in run.history])
    assert logged.data.metrics["test_log_likelihood"] == pytest.approx(run.metrics["test_log_likelihood"])
    names = {artifact.path for artifact in client.list_artifacts(logged.info.run_id)}
    assert {"config.json", "history.json", "metrics.json", "samples.png"} <= names
    assert "checkpoint.pt" not in names
