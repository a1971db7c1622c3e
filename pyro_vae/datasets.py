"""The AEVB paper's data sets as tensors: MNIST and Frey Face.

Images are flattened to rows of ``data_dim = height * width`` pixels with values in [0, 1] and
kept as one tensor per split, so that training indexes minibatches on the device with no
per-item work.

Where the data comes from
-------------------------
* **MNIST** is read with :class:`torchvision.datasets.MNIST` from ``DATA_DIR/MNIST/raw``. If the
  files are not there it is downloaded from torchvision's mirrors. ``DATA_DIR`` is the
  ``data_dir`` argument (``--data-dir``), else the environment variable ``PYRO_VAE_DATA``, else
  ``~/.cache/pyro-vae``.
* **Frey Face** (1965 frames of 28x20 of one face, from Sam Roweis' data page,
  ``frey_rawface.mat``; see ``pyro_vae/bundled/README.md``) is bundled with the package.
  A ``frey_rawface.mat`` in ``DATA_DIR/FreyFace/`` (or ``DATA_DIR`` itself) takes precedence.

Frey Face train/test split
--------------------------
The frames are consecutive video frames, so neighbours are near-duplicates. The test set is
200 frames drawn uniformly at random with a fixed seed (:data:`FREY_SPLIT_SEED`, independent
of the training seed), the rest is the training set. Most test frames thus have a
near-duplicate neighbour in the training set: the test bound measures how well the model fits
new frames of the same recording, as in the paper's Figure 2, where train and test curves stay
close. A block split (e.g. the last 200 frames as test) asks instead for generalisation to
poses never seen; with a learned-variance Gaussian decoder the test bound then collapses by
thousands of nats while the training bound rises, which is a statement about 1765 frames of
one video, not about the algorithm.

Binarization of MNIST
---------------------
``dynamic`` (default) draws every training pixel from Bernoulli(intensity) anew each time its
batch is used (the convention of the IWAE paper, Burda et al. 2016); ``static`` draws the training
set once; ``none`` keeps grey levels (use a Gaussian likelihood then). Evaluation sets of both
binarized modes are drawn once with the fixed seed :data:`EVAL_BINARIZATION_SEED`, so that test
figures of different runs score the same binary images.
"""

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch

from .errors import ConfigError, DataError

DATASETS = ("frey-face", "mnist")
BINARIZATIONS = ("dynamic", "static", "none")
FREY_SPLIT_SEED = 0
FREY_TEST_SIZE = 200
FREY_SHAPE = (28, 20)
FREY_FRAMES = 1965
EVAL_BINARIZATION_SEED = 0
BUNDLED_FREY_FACE = Path(__file__).parent / "bundled" / "frey_rawface.mat"


@dataclass
class ImageData:
    """One data set: train and test images as ``(N, height*width)`` float tensors in [0, 1]."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    image_shape: tuple
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    source: str = ""

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    def to(self, device: torch.device) -> "ImageData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, train=move(self.train), test=move(self.test),
                       train_labels=move(self.train_labels), test_labels=move(self.test_labels))


def resolve_data_dir(data_dir: Optional[os.PathLike] = None) -> Path:
    """``data_dir``, else ``$PYRO_VAE_DATA``, else ``~/.cache/pyro-vae``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("PYRO_VAE_DATA"):
        return Path(os.environ["PYRO_VAE_DATA"]).expanduser()
    return Path.home() / ".cache" / "pyro-vae"


def load_mnist(data_dir: Optional[os.PathLike] = None, download: bool = True) -> ImageData:
    """MNIST's 60,000 training and 10,000 test digits (28x28), read or downloaded by torchvision."""
    from torchvision.datasets import MNIST

    root = resolve_data_dir(data_dir)
    splits = {}
    for train in (True, False):
        try:
            mnist = MNIST(str(root), train=train, download=download)
        except RuntimeError as error:
            if "not found" in str(error) or "Error downloading" in str(error) or "download" in str(error).lower():
                raise DataError(
                    f"MNIST is not under {root / 'MNIST' / 'raw'} and could not be downloaded: "
                    "connect to the internet, or point --data-dir (or PYRO_VAE_DATA) at a folder holding MNIST/raw"
                ) from None
            raise DataError(f"MNIST under {root} is unreadable ({error}): delete MNIST/raw there to re-download it") from None
        except Exception as error:  # torchvision's IDX reader fails in many ways on corrupt files
            raise DataError(
                f"MNIST under {root / 'MNIST' / 'raw'} is corrupt ({type(error).__name__}: {error}): "
                "delete the files to re-download them"
            ) from None
        images, labels = mnist.data, mnist.targets
        if images.dim() != 3 or images.shape[1:] != (28, 28) or len(labels) != len(images) or len(images) == 0:
            raise DataError(
                f"MNIST under {root / 'MNIST' / 'raw'} has images of shape {tuple(images.shape)} and "
                f"{len(labels)} labels, expected (N, 28, 28) with N labels: replace the files"
            )
        splits[train] = (images.reshape(len(images), -1).float() / 255.0, labels.long())
    (train_x, train_y), (test_x, test_y) = splits[True], splits[False]
    return ImageData("mnist", train_x, test_x, (28, 28), train_y, test_y, source=str(root / "MNIST" / "raw"))


def read_frey_face(path: os.PathLike) -> torch.Tensor:
    """The frames of a ``frey_rawface.mat`` as a ``(N, 28, 20)`` uint8 tensor.

    The file is a MATLAB v5 file holding ``ff``, a ``(560, N)`` uint8 array, one frame per column,
    each frame row-major 28x20.
    """
    import numpy as np
    from scipy.io import loadmat

    path = Path(path)
    try:
        contents = loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: pass the path of frey_rawface.mat") from None
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError, ... on corrupt files
        raise DataError(f"{path} is not a readable MATLAB file ({type(error).__name__}: {error}): "
                        "replace it with frey_rawface.mat") from None
    if "ff" not in contents:
        raise DataError(f"{path} holds no array 'ff' (it holds {sorted(k for k in contents if not k.startswith('__'))}): "
                        "it is not frey_rawface.mat")
    frames = np.asarray(contents["ff"])
    pixels = FREY_SHAPE[0] * FREY_SHAPE[1]
    if frames.ndim != 2 or frames.shape[0] != pixels or frames.shape[1] == 0:
        raise DataError(f"{path}: 'ff' has shape {frames.shape}, expected ({pixels}, N) with one 28x20 frame "
                        "per column: replace it with frey_rawface.mat")
    if frames.dtype != np.uint8:
        if not np.isfinite(frames).all() or frames.min() < 0 or frames.max() > 255:
            raise DataError(f"{path}: 'ff' holds values outside 0..255: replace it with frey_rawface.mat")
        frames = frames.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(frames.T)).reshape(-1, *FREY_SHAPE)


def frey_face_path(data_dir: Optional[os.PathLike] = None) -> Path:
    """A user's ``frey_rawface.mat`` under the data folder if there is one, else the bundled copy."""
    if data_dir is not None or os.environ.get("PYRO_VAE_DATA"):
        root = resolve_data_dir(data_dir)
        for candidate in (root / "FreyFace" / "frey_rawface.mat", root / "frey_rawface.mat"):
            if candidate.is_file():
                return candidate
    return BUNDLED_FREY_FACE


def load_frey_face(data_dir: Optional[os.PathLike] = None, test_size: int = FREY_TEST_SIZE) -> ImageData:
    """Frey Face, 28x20 pixels in [0, 1], split as the module docstring explains."""
    path = frey_face_path(data_dir)
    frames = read_frey_face(path)
    if not 0 < test_size < len(frames):
        raise DataError(f"{path} holds {len(frames)} frames, too few for a test set of {test_size}: "
                        "use the full frey_rawface.mat")
    images = frames.reshape(len(frames), -1).float() / 255.0
    order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(FREY_SPLIT_SEED))
    test_index, train_index = order[:test_size].sort().values, order[test_size:].sort().values
    return ImageData("frey-face", images[train_index], images[test_index], FREY_SHAPE, source=str(path))


def load_dataset(name: str, data_dir: Optional[os.PathLike] = None, download: bool = True) -> ImageData:
    """The data set called ``name``: ``mnist`` or ``frey-face``."""
    if name == "mnist":
        return load_mnist(data_dir, download)
    if name == "frey-face":
        return load_frey_face(data_dir)
    raise ConfigError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def binarize_once(x: torch.Tensor, seed: int = EVAL_BINARIZATION_SEED) -> torch.Tensor:
    """One fixed Bernoulli draw of every pixel (static binarization)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


def prepare_binarization(data: ImageData, binarize: str) -> tuple[ImageData, bool]:
    """Apply ``binarize`` to ``data``; returns the data and whether batches are drawn dynamically.

    With ``dynamic`` the returned training images keep their grey levels (each minibatch is
    binarized when drawn, see :func:`minibatches`) and the test images are binarized once.
    """
    if binarize not in BINARIZATIONS:
        raise ConfigError(f"unknown binarization {binarize!r}: choose one of {', '.join(BINARIZATIONS)}")
    if binarize == "none":
        return data, False
    test = binarize_once(data.test, EVAL_BINARIZATION_SEED + 1)
    if binarize == "static":
        return replace(data, train=binarize_once(data.train), test=test), False
    return replace(data, test=test), True


def minibatch_indices(num_data: int, batch_size: int, generator: torch.Generator,
                      drop_last: bool = False) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches into ``num_data`` rows, on ``generator``'s device.

    The last batch is smaller when ``batch_size`` does not divide ``num_data``, or left out with
    ``drop_last``.
    """
    order = torch.randperm(num_data, generator=generator, device=generator.device)
    if drop_last:
        order = order[: len(order) - len(order) % batch_size]
    yield from order.split(batch_size)


def draw_batch(x: torch.Tensor, index: torch.Tensor, generator: torch.Generator,
               dynamic_binarization: bool = False) -> torch.Tensor:
    """The rows ``index`` of ``x``; with ``dynamic_binarization`` a fresh Bernoulli draw of their grey
    levels from ``generator`` (the training loop's batches)."""
    batch = x[index]
    return torch.bernoulli(batch, generator=generator) if dynamic_binarization else batch


def minibatches(x: torch.Tensor, batch_size: int, generator: torch.Generator,
                dynamic_binarization: bool = False, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """One epoch of shuffled minibatches of the rows of ``x``, indexed on ``x``'s device.

    Batches are as :func:`minibatch_indices` draws them and :func:`draw_batch` takes them. The
    order and the draws come from ``generator`` (which must live on ``x``'s device), so a seeded
    generator reproduces them exactly.
    """
    for batch_index in minibatch_indices(len(x), batch_size, generator, drop_last):
        yield draw_batch(x, batch_index, generator, dynamic_binarization)


class IndexCycle:
    """Index batches into ``num_data`` rows without end, reshuffled from ``generator`` after every pass.

    It draws exactly what :func:`minibatch_indices` draws, pass after pass, and its position
    (:meth:`state`, :meth:`restore`) can be saved in a checkpoint, so that a run stopped in the
    middle of a pass continues with the same batches.
    """

    def __init__(self, num_data: int, batch_size: int, generator: torch.Generator, drop_last: bool = False):
        self.num_data, self.batch_size, self.generator, self.drop_last = num_data, batch_size, generator, drop_last
        self.order: Optional[torch.Tensor] = None
        self.position = 0

    @property
    def batches_per_pass(self) -> int:
        full, rest = divmod(self.num_data, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self) -> "IndexCycle":
        return self

    def __next__(self) -> torch.Tensor:
        if self.order is None or self.position >= len(self.order):
            self.order = torch.randperm(self.num_data, generator=self.generator, device=self.generator.device)
            if self.drop_last:
                self.order = self.order[: len(self.order) - len(self.order) % self.batch_size]
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return index

    def state(self) -> dict:
        return {"order": self.order, "position": self.position}

    def restore(self, state: dict) -> None:
        self.order, self.position = state["order"], state["position"]


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` datapoints of every class, drawn at random with ``seed``.

    The classes are balanced, as in Kingma et al. (2014)'s semi-supervised experiments.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for value in labels.unique():
        members = (labels == value).nonzero().squeeze(1)
        if len(members) < per_class:
            raise ConfigError(f"class {int(value)} has only {len(members)} datapoints: pass --labels-per-class "
                              f"{len(members)} or fewer")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values
