"""Pictures of a run, as PNG files: learning curves (the paper's Figure 2), reconstructions,
samples from the prior, the learned data manifold of a 2-D latent space (Figure 4), and the
pictures a model names for itself (``model.pictures``: styles across classes for M2, samples
per class or completions for the conditional VAE), all drawn by :func:`save_image_grid`.

Image grids are made by :func:`torchvision.utils.make_grid` and drawn on a
:class:`matplotlib.figure.Figure`, which its own canvas saves: no display, no ``pyplot`` and no
backend switch, so the backend of the process that draws stays as its user set it. matplotlib is
imported when a picture is drawn, not with this module.
"""

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch


def _figure(figsize: tuple) -> tuple:
    """A new figure with one axes, outside ``pyplot``'s figure manager (nothing to close)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=120)
    return fig, fig.add_subplot()


def plot_learning_curves(history: Sequence[dict], path: os.PathLike, title: str = "") -> None:
    """Train and test ELBO per datapoint against training samples evaluated (log x-axis)."""
    samples = [record["samples_seen"] for record in history]
    fig, ax = _figure((5, 3.6))
    ax.plot(samples, [record["train_elbo"] for record in history], "-", color="C0", label="train")
    ax.plot(samples, [record["test_elbo"] for record in history], "--", color="C0", label="test")
    ax.set_xscale("log")
    ax.set_xlabel("# training samples evaluated")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def image_grid(images: torch.Tensor, image_shape: Sequence[int], nrow: int) -> torch.Tensor:
    """Rows of flattened images as one ``(H, W)`` grid, one pixel of padding between images."""
    from torchvision.utils import make_grid
    images = images.detach().float().cpu().reshape(-1, 1, *image_shape)
    return make_grid(images, nrow=nrow, padding=1, pad_value=1.0)[0]


def save_image_grid(images: torch.Tensor, image_shape: Sequence[int], nrow: int, path: os.PathLike,
                    title: str = "", pixel_size: float = 0.04) -> None:
    """Draw :func:`image_grid` in grey levels and save it."""
    grid = image_grid(images, image_shape, nrow)
    height, width = grid.shape
    fig, ax = _figure((max(3.0, width * pixel_size), max(3.0, height * pixel_size) + 0.4))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def plot_reconstructions(model, inputs: tuple, image_shape: Sequence[int], path: os.PathLike) -> None:
    """Data (top row) over their reconstructions ``model.reconstruct(*inputs)`` (bottom row); ``inputs``
    are the model's arguments for a few test images, the images first."""
    save_image_grid(torch.cat([inputs[0], model.reconstruct(*inputs)]), image_shape, len(inputs[0]), path,
                    "data (top) and reconstructions (bottom)")


def plot_samples(model, image_shape: Sequence[int], path: os.PathLike, count: int = 100, seed: int = 0) -> None:
    """Decoder means at ``count`` draws from the prior."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    nrow = int(count ** 0.5)
    save_image_grid(model.generate(count, generator), image_shape, nrow, path, "samples from the prior (decoder means)")


def latent_grid(points_per_axis: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """A ``points_per_axis^2 x 2`` grid of codes at equally spaced quantiles of N(0, 1).

    As in the paper's Figure 4, the grid's linearly spaced coordinates on the unit square are
    mapped through the inverse CDF of the Gaussian, so that each cell holds equal prior mass.
    Row ``i`` of the grid has the second coordinate's ``i``-th quantile from the top.
    """
    quantiles = torch.linspace(0.0, 1.0, points_per_axis + 2, device=device)[1:-1]
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)


def plot_model_pictures(model, x: torch.Tensor, labels: Optional[torch.Tensor], image_shape: Sequence[int],
                        directory: os.PathLike, seed: int = 0) -> list:
    """Save every picture ``model.pictures(x, labels, generator)`` names, as ``<name>.png``.

    A model's ``pictures`` returns ``{name: (images, images_per_row, title)}``; returns the paths.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    paths = []
    for name, (images, nrow, title) in model.pictures(x, labels, generator).items():
        path = os.path.join(directory, f"{name}.png")
        save_image_grid(images, image_shape, nrow, path, title)
        paths.append(path)
    return paths


#: The pictures of a run beside its learning curves: file, and the model's method it needs.
RUN_PICTURES = (("reconstructions.png", "reconstruct"), ("samples.png", "generate"))


def draw_run_pictures(model, data, history: Sequence[dict], out, test_inputs: tuple) -> list:
    """A run's pictures: learning curves, and those the model's optional methods allow
    (``reconstruct``: reconstructions of ``test_inputs``, the model's arguments for a few test images;
    ``generate``: samples; ``pictures``: its own, such as the manifold of a 2-D latent space).
    Returns the pictures skipped, and says which in one line on standard error."""
    out = Path(out)
    model.eval()
    title = data.name + (f", Nz = {model.latent_dim}" if hasattr(model, "latent_dim") else "")
    plot_learning_curves(history, out / "learning_curve.png", title)
    skipped = [f"{name} (no {method} method)" for name, method in RUN_PICTURES
               if not callable(getattr(model, method, None))]
    if callable(getattr(model, "reconstruct", None)):
        plot_reconstructions(model, test_inputs, data.image_shape, out / "reconstructions.png")
    if callable(getattr(model, "generate", None)):
        plot_samples(model, data.image_shape, out / "samples.png")
    if callable(getattr(model, "pictures", None)):
        plot_model_pictures(model, data.test, data.test_labels, data.image_shape, out)
    if skipped:
        print(f"pictures skipped: {', '.join(skipped)}", file=sys.stderr)
    return skipped
