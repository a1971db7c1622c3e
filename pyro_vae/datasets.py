"""Data sets as tensors: the AEVB paper's MNIST and Frey Face, and a user's own images.

Images are flattened to rows of ``data_dim = height * width`` pixels with values in [0, 1] and
kept as one tensor per split, so that training indexes minibatches on the device with no
per-item work.

Your own data
-------------
Grey-level images of one size, a train and a test split, optional integer labels 0..C-1:

* :meth:`ImageData.from_arrays` — numpy arrays or torch tensors ``(N, H, W)`` or ``(N, D)``
  (a single channel axis, ``(N, 1, H, W)`` or ``(N, H, W, 1)``, is dropped), uint8 0..255 or
  floats in [0, 1];
* :meth:`ImageData.from_file` — a ``.npz`` (``np.savez``) or ``.pt`` (``torch.save`` of a dict of
  tensors) holding ``train``, ``test`` and optionally ``train_labels``, ``test_labels``,
  ``image_shape``; ``load_dataset("FILE.npz")`` and ``--dataset FILE.npz`` read it;
* :meth:`ImageData.from_datasets` — two torch ``Dataset`` s yielding images or (image, label).

Anything else is refused with a :class:`~pyro_vae.errors.DataError` naming the problem and the
fix. See ``docs/your_own_data.md``.

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
"""

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError, DataError
from .tensor_data import TensorData

DATASETS = ("frey-face", "mnist")
FREY_SPLIT_SEED = 0
FREY_TEST_SIZE = 200
FREY_SHAPE = (28, 20)
BUNDLED_FREY_FACE = Path(__file__).parent / "bundled" / "frey_rawface.mat"
#: the suffixes of files :meth:`ImageData.from_file` reads
FILE_SUFFIXES = (".npz", ".pt")
#: the keys such a file may hold
FILE_KEYS = ("train", "test", "train_labels", "test_labels", "image_shape")
#: datasets at least this long are stacked by :meth:`ImageData.from_datasets` under a progress bar
PROGRESS_MIN_ITEMS = 10_000


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

    @property
    def num_classes(self) -> Optional[int]:
        """One more than the largest label of either split; None without labels."""
        labels = [t for t in (self.train_labels, self.test_labels) if t is not None and len(t)]
        return None if not labels else 1 + max(int(t.max()) for t in labels)

    def is_binary(self) -> bool:
        """Whether every pixel of both splits is 0 or 1 (what a Bernoulli likelihood scores as is)."""
        return all(bool(((x == 0) | (x == 1)).all()) for x in (self.train, self.test))

    @classmethod
    def from_arrays(cls, train: Any, test: Any, train_labels: Any = None, test_labels: Any = None,
                    image_shape: Optional[Sequence[int]] = None, name: str = "data") -> "ImageData":
        """A data set from images in numpy arrays or torch tensors, checked.

        :param train, test: ``(N, H, W)`` or ``(N, D)`` images (or ``(N, 1, H, W)``,
            ``(N, H, W, 1)``), uint8 0..255 (divided by 255), bool, or floats in [0, 1].
        :param train_labels, test_labels: optional integer labels ``(N,)``, values 0..C-1.
        :param image_shape: ``(height, width)``; defaults to ``(H, W)`` of 3-D input, else to
            ``(sqrt(D), sqrt(D))`` when ``D`` is a square, else ``(1, D)``.
        :returns: rows ``(N, H*W)`` of float32 in [0, 1], labels int64, on the input's device.
        :raises DataError: with one line naming the problem and the fix.
        """
        splits = {}
        for split, images in (("train", train), ("test", test)):
            splits[split] = _images(images, split)
        (train_x, train_hw), (test_x, test_hw) = splits["train"], splits["test"]
        if train_x.shape[1] != test_x.shape[1] or (train_hw and test_hw and train_hw != test_hw):
            raise DataError(f"train images are {_size(train_x, train_hw)} but test images are "
                            f"{_size(test_x, test_hw)}: both splits must hold images of one size")
        shape = _image_shape(image_shape, train_hw or test_hw, train_x.shape[1])
        labels = {split: _labels(given, split, len(splits[split][0]))
                  for split, given in (("train", train_labels), ("test", test_labels))}
        return cls(str(name), train_x, test_x, shape, labels["train"], labels["test"], source="arrays")

    @classmethod
    def from_file(cls, path: os.PathLike) -> "ImageData":
        """A data set from a ``.npz`` (numpy, no pickles) or ``.pt`` (a dict of tensors) file.

        The file holds ``train`` and ``test`` and optionally ``train_labels``, ``test_labels`` and
        ``image_shape``, as :meth:`from_arrays` takes them. The name is the file's stem.
        """
        path = Path(path).expanduser()
        return cls.from_contents(read_data_file(path), path)

    @classmethod
    def from_contents(cls, contents: dict, path: Path) -> "ImageData":
        """The images of a data file's arrays (:meth:`from_file`)."""
        missing = [key for key in ("train", "test") if key not in contents]
        if missing:
            raise DataError(f"{path} holds no {' or '.join(map(repr, missing))} (it holds {sorted(contents)}): "
                            f"save the images under the keys 'train' and 'test'")
        unknown = sorted(set(contents) - set(FILE_KEYS))
        if unknown:
            raise DataError(f"{path} holds keys {unknown} that are not read: keep only {', '.join(FILE_KEYS)}")
        shape = contents.get("image_shape")
        if shape is not None:
            shape = np.asarray(shape.cpu() if torch.is_tensor(shape) else shape)
            if shape.dtype.kind not in "iu" or shape.ndim != 1:
                raise DataError(f"{path}: 'image_shape' is {shape.tolist()!r}, expected two integers "
                                "(height, width)")
            shape = tuple(int(v) for v in shape)
        try:
            data = cls.from_arrays(contents["train"], contents["test"], contents.get("train_labels"),
                                   contents.get("test_labels"), shape, name=path.stem)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None
        return replace(data, source=str(path))

    @classmethod
    def from_datasets(cls, train_dataset: Any, test_dataset: Any, image_shape: Optional[Sequence[int]] = None,
                      name: str = "data", progress: Optional[bool] = None) -> "ImageData":
        """A data set from two torch ``Dataset`` s, stacked into tensors and checked as by :meth:`from_arrays`.

        Items are images (tensor, ndarray or PIL image; e.g. a torchvision data set with
        ``transforms.ToTensor()``) or ``(image, label)`` pairs with integer labels. ``progress``
        shows a bar while stacking; by default for data sets of ``PROGRESS_MIN_ITEMS`` or more.
        """
        stacked = {split: _stack(dataset, split, progress)
                   for split, dataset in (("train", train_dataset), ("test", test_dataset))}
        (train_x, train_y), (test_x, test_y) = stacked["train"], stacked["test"]
        data = cls.from_arrays(train_x, test_x, train_y, test_y, image_shape, name)
        return replace(data, source=f"{type(train_dataset).__name__}, {type(test_dataset).__name__}")


def _images(images: Any, split: str) -> tuple[torch.Tensor, Optional[tuple]]:
    """``images`` as float32 rows in [0, 1], and their ``(H, W)`` if they came as 2-D images."""
    what = f"{split} images"
    if images is None:
        raise DataError(f"no {what}: pass an array of shape (N, H, W) or (N, D)")
    if not torch.is_tensor(images):
        array = np.asarray(images)
        if array.dtype.kind not in "biufc":  # complex is refused below, with tensors
            raise DataError(f"{what} are of dtype {array.dtype}, not numbers: pass uint8 0..255 or floats in [0, 1]")
        if not array.flags.writeable:
            array = array.copy()
        images = torch.from_numpy(np.ascontiguousarray(array))
    if images.is_complex():
        raise DataError(f"{what} are of dtype {images.dtype}: pass real uint8 0..255 or floats in [0, 1]")
    if images.dim() == 4 and 1 in (images.shape[1], images.shape[3]):
        images = images.squeeze(1) if images.shape[1] == 1 else images.squeeze(3)
    if images.dim() not in (2, 3):
        hint = (" (several colour channels: convert to one grey channel)" if images.dim() == 4 else "")
        raise DataError(f"{what} have shape {tuple(images.shape)}{hint}: pass (N, H, W) images or (N, D) rows")
    if len(images) == 0:
        raise DataError(f"{what} are empty (shape {tuple(images.shape)}): pass at least one image per split")
    hw = tuple(int(v) for v in images.shape[1:]) if images.dim() == 3 else None
    rows = images.reshape(len(images), -1)
    if rows.shape[1] == 0:
        raise DataError(f"{what} have no pixels (shape {tuple(images.shape)}): pass (N, H, W) images or (N, D) rows")
    if images.dtype == torch.uint8:
        return rows.float() / 255.0, hw
    if images.dtype == torch.bool:
        return rows.float(), hw
    if not images.is_floating_point():
        raise DataError(f"{what} are of dtype {images.dtype}, which is ambiguous: pass uint8 0..255 "
                        "(x.astype('uint8')) or floats in [0, 1] (x / 255)")
    if not torch.isfinite(rows).all():
        raise DataError(f"{what} hold NaN or infinite values: replace or drop those images")
    low, high = float(rows.min()), float(rows.max())
    if low < 0 or high > 1:
        raise DataError(f"{what} hold values in [{low:g}, {high:g}], outside [0, 1]: divide 0..255 values by 255 "
                        "or rescale to [0, 1], or pass data that are not images as TensorData (in a file: arrays "
                        "train_<name> and test_<name>)")
    return rows.float().contiguous(), hw


def _size(rows: torch.Tensor, hw: Optional[tuple]) -> str:
    return f"{hw[0]}x{hw[1]} ({rows.shape[1]} pixels)" if hw else f"{rows.shape[1]} pixels"


def _labels(labels: Any, split: str, count: int) -> Optional[torch.Tensor]:
    """``labels`` as int64, checked against ``count`` images; None stays None."""
    if labels is None:
        return None
    what = f"{split} labels"
    if not torch.is_tensor(labels):
        array = np.asarray(labels)
        if array.dtype.kind not in "iu":
            raise DataError(f"{what} are of dtype {array.dtype}: pass integer class indices 0..C-1 "
                            "(e.g. labels.astype('int64'))")
        labels = torch.from_numpy(np.ascontiguousarray(array))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{what} are of dtype {labels.dtype}: pass integer class indices 0..C-1 "
                        "(e.g. labels.long())")
    if labels.dim() != 1 or len(labels) != count:
        raise DataError(f"{what} have shape {tuple(labels.shape)} for {count} images: pass one integer label "
                        f"per image, shape ({count},)")
    if count and int(labels.min()) < 0:
        raise DataError(f"{what} include {int(labels.min())}: labels must be class indices 0..C-1")
    return labels.long()


def _image_shape(given: Optional[Sequence[int]], hw: Optional[tuple], data_dim: int) -> tuple:
    """The ``(height, width)`` of rows of ``data_dim`` pixels, as the user gave it or guessed."""
    if given is None:
        if hw is not None:
            return hw
        side = math.isqrt(data_dim)
        return (side, side) if side * side == data_dim else (1, data_dim)
    try:
        shape = tuple(int(v) for v in given)
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] != data_dim:
        raise DataError(f"image_shape {given!r} does not hold the images' {data_dim} pixels: pass (height, width) "
                        f"with height * width = {data_dim}")
    return shape


def _read_npz(path: Path) -> dict:
    """The arrays of a ``.npz``, refusing pickled objects."""
    try:
        contents = np.load(path, allow_pickle=False)
        if isinstance(contents, np.lib.npyio.NpzFile):
            with contents:
                return {key: contents[key] for key in contents.files}
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise DataError(f"{path} holds pickled Python objects, which are not read (they can run code): "
                            "save plain numeric arrays with np.savez") from None
        raise DataError(f"{path} is not a readable .npz file ({error}): save it with np.savez") from None
    except Exception as error:  # zipfile and numpy raise many kinds on a damaged archive
        raise DataError(f"{path} is not a readable .npz file ({type(error).__name__}: {error}): "
                        "save it with np.savez") from None
    raise DataError(f"{path} holds one unnamed array: save named arrays with np.savez(path, train=..., test=...)")


def _read_pt(path: Path) -> dict:
    """The tensors of a ``.pt`` holding a dict, loaded with ``weights_only=True``."""
    import pickle
    import zipfile

    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives; this is garbage or a legacy file
            raise DataError(f"{path} is not a readable .pt file (not a torch.save archive): "
                            "torch.save a dict of tensors") from None
        raise DataError(f"{path} holds Python objects other than tensors, which are not read (they can run "
                        "code): torch.save a dict of tensors") from None
    except Exception as error:  # torch raises many kinds on a damaged file
        raise DataError(f"{path} is not a readable .pt file ({type(error).__name__}: {error}): "
                        "torch.save a dict of tensors") from None
    if not isinstance(contents, dict):
        raise DataError(f"{path} holds a {type(contents).__name__}, not a dict: "
                        "torch.save({'train': ..., 'test': ...}, path)")
    return {str(key): value for key, value in contents.items()}


def _item_image(image: Any, split: str, index: int) -> torch.Tensor:
    """One item's image as a tensor (PIL images through numpy)."""
    if torch.is_tensor(image):
        return image
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{split} item {index} is a {type(image).__name__}, not an image: yield tensors, "
                        "ndarrays or PIL images, or (image, label) pairs")
    return torch.from_numpy(np.array(array))


def _item_label(label: Any, split: str, index: int) -> int:
    """One item's label as an int; refuses floats, bools and anything of more than one element."""
    if torch.is_tensor(label) and label.numel() == 1 and not (label.is_floating_point() or label.dtype == torch.bool):
        return int(label.item())
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        return int(label)
    raise DataError(f"{split} item {index} has the label {label!r}: yield integer class indices 0..C-1 as labels")


def _stack(dataset: Any, split: str, progress: Optional[bool]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """All images (and labels, if the items are pairs) of ``dataset``, stacked."""
    from tqdm.auto import tqdm

    count = len(dataset) if hasattr(dataset, "__len__") else None
    indexed = count is not None and hasattr(dataset, "__getitem__")
    items = (dataset[i] for i in range(count)) if indexed else iter(dataset)
    show = (count or 0) >= PROGRESS_MIN_ITEMS if progress is None else progress
    images, labels, first = [], [], None  # first: the image and whether item 0 was labelled
    with tqdm(total=count, desc=f"stacking the {split} set", unit="image", disable=not show, leave=False) as bar:
        for index, item in enumerate(items):
            if isinstance(item, (tuple, list)) and len(item) not in (1, 2):
                raise DataError(f"{split} item {index} is a {type(item).__name__} of {len(item)}: "
                                "yield an image or an (image, label) pair")
            labelled = isinstance(item, (tuple, list)) and len(item) == 2
            image = _item_image(item[0] if isinstance(item, (tuple, list)) else item, split, index)
            if first is None:
                first = (image, labelled)
            elif labelled != first[1]:
                raise DataError(f"{split} item {index} {'lacks' if first[1] else 'has'} a label, item 0 "
                                f"{'has' if first[1] else 'lacks'}: yield images alone or (image, label) pairs throughout")
            elif image.shape != first[0].shape or image.dtype != first[0].dtype:
                raise DataError(f"{split} item {index} is {image.dtype} of shape {tuple(image.shape)}, item 0 "
                                f"{first[0].dtype} of {tuple(first[0].shape)}: give all images one size and dtype "
                                "(e.g. transforms.Resize, transforms.ToTensor)")
            images.append(image)
            if labelled:
                labels.append(_item_label(item[1], split, index))
            bar.update()
    if first is None:
        raise DataError(f"the {split} data set is empty: pass at least one image per split")
    return torch.stack(images), (torch.tensor(labels, dtype=torch.long) if first[1] else None)


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
        splits[train] = (images, labels)
    (train_x, train_y), (test_x, test_y) = splits[True], splits[False]
    data = ImageData.from_arrays(train_x, test_x, train_y, test_y, name="mnist")
    return replace(data, source=str(root / "MNIST" / "raw"))


def read_frey_face(path: os.PathLike) -> torch.Tensor:
    """The frames of a ``frey_rawface.mat`` as a ``(N, 28, 20)`` uint8 tensor.

    The file is a MATLAB v5 file holding ``ff``, a ``(560, N)`` uint8 array, one frame per column,
    each frame row-major 28x20.
    """
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
    order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(FREY_SPLIT_SEED))
    test_index, train_index = order[:test_size].sort().values, order[test_size:].sort().values
    data = ImageData.from_arrays(frames[train_index], frames[test_index], name="frey-face")
    return replace(data, source=str(path))


def read_data_file(path: Path) -> dict:
    """The arrays of a ``.npz`` or ``.pt`` data file, read as data only (no pickled objects)."""
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: cannot read {path.suffix or 'a file without a suffix'}: "
                        f"save the data as .npz (np.savez) or .pt (torch.save of a dict of tensors)")
    if not path.is_file():
        raise DataError(f"{path} does not exist: pass the path of a .npz or .pt file")
    return _read_npz(path) if path.suffix == ".npz" else _read_pt(path)


def _holds_images(contents: dict) -> bool:
    """Whether a data file holds images: only the keys of :data:`FILE_KEYS` (anything else is
    :class:`~pyro_vae.TensorData`: arrays ``train_<name>`` and ``test_<name>``)."""
    return set(contents) <= set(FILE_KEYS)


def load_data_file(path: os.PathLike) -> "ImageData | TensorData":
    """A ``.npz``/``.pt`` file as images (:func:`_holds_images`), else as :class:`~pyro_vae.TensorData`
    (see :mod:`pyro_vae.tensor_data`)."""
    path = Path(path).expanduser()
    contents = read_data_file(path)
    if _holds_images(contents):
        return ImageData.from_contents(contents, path)
    return TensorData.from_contents(contents, path.stem, str(path))


def load_dataset(name: "str | os.PathLike", data_dir: Optional[os.PathLike] = None,
                 download: bool = True) -> "ImageData | TensorData":
    """The built-in data set called ``name`` (``mnist``, ``frey-face``), or the ``.npz``/``.pt`` file at it
    (:func:`load_data_file`)."""
    if name == "mnist":
        return load_mnist(data_dir, download)
    if name == "frey-face":
        return load_frey_face(data_dir)
    if Path(name).suffix in FILE_SUFFIXES or Path(name).expanduser().is_file():
        return load_data_file(name)
    raise ConfigError(f"unknown dataset {str(name)!r}: choose one of {', '.join(DATASETS)}, "
                      f"or pass the path of a .npz or .pt file")
