"""Data of any kind: tensors, one row per datapoint, passed to model and guide as they are.

:class:`TensorData` holds a train and a test split, each a tensor or a tuple of tensors whose
first dimension indexes the datapoints: real values, counts, categories, any dtype and range.
A minibatch is the same rows of every tensor, passed as ``model(*rows, num_data=...)`` and
``guide(*rows, num_data=...)``. Images, with binarization and pictures, are
:class:`~pyro_vae.ImageData`.

In a ``.npz`` or ``.pt`` file (``--dataset FILE.npz``) the tensors are arrays ``train_<name>`` and
``test_<name>``, passed in the file's order: ``np.savez(path, train_x=x, train_t=t, test_x=x_test,
test_t=t_test)`` gives ``model(x, t)``. A file holding only ``train``, ``test`` and optionally
``train_labels``, ``test_labels``, ``image_shape`` (:data:`pyro_vae.datasets.FILE_KEYS`) holds images.
"""

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from .errors import DataError


def _tensors(value: Any, split: str) -> tuple:
    values = value if isinstance(value, (tuple, list)) else (value,)
    tensors = []
    for position, item in enumerate(values):
        if isinstance(item, np.ndarray) and item.dtype == object:
            raise DataError(f"{split} tensor {position} holds Python objects: pass numeric arrays")
        try:
            tensors.append(torch.as_tensor(item))
        except (TypeError, ValueError, RuntimeError) as error:
            raise DataError(f"{split} tensor {position} is not numeric ({error}): pass tensors or numeric "
                            "arrays") from None
    if not tensors:
        raise DataError(f"the {split} split holds no tensor: pass a tensor or a tuple of tensors")
    if any(t.dim() == 0 for t in tensors) or len({len(t) for t in tensors}) != 1:
        raise DataError(f"the {split} tensors have {[len(t) if t.dim() else 0 for t in tensors]} rows: every "
                        "tensor of a split needs the same number of rows, one per datapoint")
    return tuple(tensors)


@dataclass
class TensorData:
    """Train and test splits as tuples of tensors with one row per datapoint (see the module's docstring)."""

    train: Any
    test: Any
    name: str = "tensors"
    source: str = "tensors"

    def __post_init__(self):
        self.train, self.test = _tensors(self.train, "train"), _tensors(self.test, "test")
        if len(self.train) != len(self.test):
            raise DataError(f"train has {len(self.train)} tensors and test {len(self.test)}: give both splits "
                            "the same tensors")
        for position, (a, b) in enumerate(zip(self.train, self.test)):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise DataError(f"tensor {position} is {tuple(a.shape[1:])} {a.dtype} per row in train but "
                                f"{tuple(b.shape[1:])} {b.dtype} in test: give both splits the same kind of rows")
        if not len(self.train[0]) or not len(self.test[0]):
            raise DataError("a split has no rows: give train and test at least one datapoint each")

    @property
    def data_dim(self) -> int:
        """The number of values in a row of the first tensor."""
        return int(np.prod(self.train[0].shape[1:], dtype=np.int64))

    def to(self, device: torch.device) -> "TensorData":
        return replace(self, train=tuple(t.to(device) for t in self.train), test=tuple(t.to(device) for t in self.test))

    def rows(self, split: str, index: Optional[torch.Tensor] = None) -> tuple:
        """The tensors of ``split``, or their rows ``index``."""
        tensors = self.train if split == "train" else self.test
        return tensors if index is None else tuple(t[index.to(t.device)] for t in tensors)

    def select(self, split: str, index: torch.Tensor) -> "TensorData":
        """A copy keeping the rows ``index`` of ``split``."""
        return replace(self, **{split: self.rows(split, index)})

    @classmethod
    def from_contents(cls, contents: dict, name: str, source: str) -> "TensorData":
        """The splits of a file's arrays: ``train`` and ``test``, or ``train_<name>`` and ``test_<name>``."""
        train = [key for key in contents if key == "train" or key.startswith("train_")]
        test = ["test" + key[len("train"):] for key in train]
        unread = sorted(set(contents) - set(train) - set(test))
        missing = [key for key in test if key not in contents]
        if not train:
            raise DataError(f"{source} holds no 'train' or 'test' (it holds {sorted(contents)}): save images as "
                            "train and test, or other data as train_<name> and test_<name> for each tensor")
        if missing or unread:
            raise DataError(f"{source} holds {sorted(contents)}, not a test_<name> for every train_<name>: save "
                            f"{', '.join(missing or unread)} too, or images as train and test")
        return cls(tuple(contents[key] for key in train), tuple(contents[key] for key in test), name, source)
