"""Training seen in TensorBoard: ``fit(..., callbacks=[TensorBoard("tb")])``, then ``tensorboard --logdir tb``.

Needs the ``tensorboard`` package (``pip install 'pyro-vae[tracking]'``); event files are written by
:class:`torch.utils.tensorboard.SummaryWriter`. What is logged, and under which tags, is in
``docs/tracking.md``. Every value is logged at the global step ``state.step``.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ConfigError
from ..plots import image_grid
from . import Callback, State

SAMPLES = 64  # samples from the prior drawn at each evaluation, as an 8 x 8 grid
SAMPLES_SEED = 0  # the same draws of z at every evaluation: the pictures show the decoder learning


class TensorBoard(Callback):
    """Scalars, pictures and the run's settings as TensorBoard event files in ``log_dir``.

    :param log_dir: the folder of the event files (one run of TensorBoard's; a resumed run appends,
        dropping events at or after the step it resumes from).
    :param every: log the step's loss, gradient norm, learning rate and speed every ``every`` steps
        (reading the loss waits for the step).
    :param image_shape: ``(height, width)`` of the model's images; pictures are drawn only when it is
        known (given, or the shape of 3-D ``images``).
    :param images: a few test images, ``(N, height, width)`` or ``(N, height * width)``, drawn over their
        reconstructions at each evaluation (for a model with ``reconstruct``); without them, only
        samples (for a model with ``generate``).
    """

    def __init__(self, log_dir, every: int = 50, image_shape: Optional[Sequence[int]] = None,
                 images: Optional[torch.Tensor] = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'pyro-vae[tracking]')") from None
        if int(every) < 1:
            raise ConfigError(f"TensorBoard every={every}: log every 1 step or more")
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.every = int(every)
        self.images, self.image_shape = _pictures_of(images, image_shape)
        self.writer = None
        self._last = (0, 0.0)  # samples_seen and seconds at the last logged step

    def on_fit_start(self, state: State) -> None:
        if not state.main:
            return
        if self.image_shape is None and self.images is None and hasattr(state.data, "image_shape"):
            self.images, self.image_shape = _pictures_of(state.data.test[:8].float(), state.data.image_shape)
        self.writer = self._writer_class(str(self.log_dir), purge_step=state.step or None)
        self._last = (state.samples_seen, state.seconds)
        if self.images is not None:
            self.images = self.images.to(next(state.model.parameters()).device)

    def on_step_end(self, state: State) -> None:
        if not state.main or state.step % self.every:
            return
        if state.loss is not None:
            self.writer.add_scalar("loss/minibatch", state.loss.item(), state.step)
            if state.num_data:
                self.writer.add_scalar("objective/minibatch", -state.loss.item() / state.num_data, state.step)
        if state.grad_norm is not None:
            self.writer.add_scalar("gradient/norm", state.grad_norm.item(), state.step)
        self.writer.add_scalar("optimizer/lr", state.optimizer.param_groups[0]["lr"], state.step)
        samples, seconds = state.samples_seen - self._last[0], state.seconds - self._last[1]
        if seconds > 0:
            self.writer.add_scalar("speed/samples_per_second", samples / seconds, state.step)
        self._last = (state.samples_seen, state.seconds)

    def on_evaluation(self, state: State, record: dict) -> None:
        if not state.main:
            return
        for key, value in record.items():
            split, _, name = key.partition("_")
            if split in ("train", "test"):  # train_elbo -> elbo/train
                self.writer.add_scalar(f"{name}/{split}", value, state.step)
        if self.image_shape is not None:
            self._log_pictures(state.model, state.step)
        self.writer.flush()  # what an exception in training leaves is complete up to here

    def on_fit_end(self, state: State) -> None:
        if not state.main:
            return
        final = {f"final/{key}": value for key, value in state.metrics.items() if _is_number(value)}
        self.writer.add_hparams(settings(state.config), final, run_name=".", global_step=state.step)
        self.writer.close()

    def _log_pictures(self, model: torch.nn.Module, step: int) -> None:
        """Samples from the prior and reconstructions of ``self.images``, as far as the model has the methods."""
        was_training = model.training
        model.eval()
        try:
            if callable(getattr(model, "generate", None)):
                device = next(model.parameters()).device
                generator = torch.Generator(device=device).manual_seed(SAMPLES_SEED)
                grid = image_grid(model.generate(SAMPLES, generator), self.image_shape, int(SAMPLES ** 0.5))
                self.writer.add_image("samples", grid, step, dataformats="HW")
            if self.images is not None and callable(getattr(model, "reconstruct", None)):
                both = torch.cat([self.images, model.reconstruct(self.images)])
                self.writer.add_image("reconstructions", image_grid(both, self.image_shape, len(self.images)), step,
                                      dataformats="HW")
        finally:
            model.train(was_training)


def settings(config) -> dict:
    """The configuration's values as TensorBoard's hyperparameters: numbers, strings and booleans as they
    are, lists and dicts as their text, ``None`` left out."""
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in asdict(config).items() if value is not None}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pictures_of(images: Optional[torch.Tensor], image_shape: Optional[Sequence[int]]) -> tuple:
    """``images`` as rows of pixels (or ``None``) and the image shape (or ``None``: no pictures), checked."""
    if images is None:
        return None, None if image_shape is None else tuple(int(size) for size in image_shape)
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() == 3:
        if image_shape is not None and tuple(image_shape) != tuple(images.shape[1:]):
            raise ConfigError(f"TensorBoard images are {tuple(images.shape[1:])} but image_shape is "
                              f"{tuple(image_shape)}: give one or make them agree")
        image_shape = images.shape[1:]
    if image_shape is None or images.dim() not in (2, 3):
        raise ConfigError(f"TensorBoard images of shape {tuple(images.shape)}: give (N, height, width), or "
                          "(N, height * width) with image_shape=(height, width)")
    height, width = (int(size) for size in image_shape)
    if images[0].numel() != height * width:
        raise ConfigError(f"TensorBoard image_shape {(height, width)} does not hold the images' "
                          f"{images[0].numel()} pixels: pass their (height, width)")
    return images.reshape(len(images), -1), (height, width)
