"""The data a run trains on and its minibatches: what every step and evaluation passes to model and guide.

:func:`prepare` puts the data on the device, binarizes images as configured, keeps a fixed subset
of the test set (``test_size``) and of the training set (:data:`TRAIN_EVAL_SIZE`, for the train
ELBO), and splits the training set into :class:`Part` s: one for an unsupervised model; for a
semi-supervised one (``labels = "some"``) the unlabelled images and a class-balanced labelled
subset of ``model.labels_per_class`` per class, counted ``model.labelled_weight`` times each.
:class:`Minibatches` draws each step's minibatch of every part from one generator, so that a
checkpoint can hold where an epoch stopped.

Model and guide receive a minibatch as positional arguments: the rows of every tensor of a
:class:`~pyro_vae.TensorData`; for images the model's ``inputs(x, y)`` (default ``(x,)``, or
``(x, y)`` where labels are given: always for ``labels = "all"``, in the labelled part for
``"some"``, never in evaluation of ``"some"``, which scores p(x)).

Binarization of MNIST
---------------------
``dynamic`` (default) draws every training pixel from Bernoulli(intensity) anew each time its
batch is used (the convention of the IWAE paper, Burda et al. 2016); ``static`` draws the training
set once; ``none`` keeps grey levels (use a Gaussian likelihood then). Evaluation sets of both
binarized modes are drawn once with the fixed seed :data:`EVAL_BINARIZATION_SEED`, so that test
figures of different runs score the same binary images.
"""

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from .datasets import ImageData
from .errors import ConfigError
from .likelihoods import LIKELIHOODS
from .tensor_data import TensorData

Data = Union[ImageData, TensorData]
BINARIZATIONS = ("dynamic", "static", "none")
EVAL_BINARIZATION_SEED = 0
TRAIN_EVAL_SIZE = 10_000
TRAIN_EVAL_SEED = 0
TEST_SUBSET_SEED = 1
TRAIN_SUBSET_SEED = 0
LABELLED_SEED = 0


def binarize(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A Bernoulli draw of every pixel of ``x`` (grey levels in [0, 1]), in ``x``'s dtype.

    Drawn as uniform numbers compared with the grey levels: on the CPU the same draws as
    ``torch.bernoulli`` from the same generator, which leaves it in the same state, in less time
    (docs/speed.md).
    """
    uniform = torch.rand(x.shape, generator=generator, device=x.device,
                         dtype=torch.promote_types(x.dtype, torch.float32))
    return (uniform < x).to(x.dtype)


def binarize_once(x: torch.Tensor, seed: int = EVAL_BINARIZATION_SEED) -> torch.Tensor:
    """One fixed Bernoulli draw of every pixel (static binarization)."""
    return binarize(x, torch.Generator(device=x.device).manual_seed(seed))


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
    return binarize(batch, generator) if dynamic_binarization else batch


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


def labels_of(model: nn.Module) -> str:
    """What the model takes besides images: ``"none"``, ``"all"`` or ``"some"`` (its ``labels``, default ``"none"``)."""
    labels = getattr(model, "labels", "none")
    if labels not in ("none", "all", "some"):
        raise ConfigError(f"{type(model).__name__}.labels is {labels!r}: it must be 'none', 'all' or 'some'")
    return labels


def inputs(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]) -> tuple:
    """The arguments of ``model`` and ``guide`` for images ``x`` given labels ``y`` (or ``None``): the
    model's ``inputs(x, y)`` if it has one, else ``(x,)`` or ``(x, y)``."""
    if hasattr(model, "inputs"):
        return model.inputs(x, y)
    return (x,) if y is None else (x, y)


def arguments(model: nn.Module, data: Data, rows: tuple, training: bool = False) -> tuple:
    """The arguments of model and guide for ``rows`` of ``data`` (images and, where they exist, labels)."""
    if isinstance(data, TensorData):
        return tuple(rows)
    labels = labels_of(model)
    given = len(rows) > 1 and (labels == "all" or (labels == "some" and training))
    return inputs(model, rows[0], rows[1] if given else None)


def data_arguments(data: Data) -> dict:
    """The common factory arguments that the data decides (:data:`pyro_vae.recipes.COMMON_ARGUMENTS`)."""
    if isinstance(data, TensorData):
        return {"data_dim": data.data_dim, "num_data": len(data.train[0])}
    return {"data_dim": data.data_dim, "image_shape": list(data.image_shape), "num_data": len(data.train),
            "num_classes": data.num_classes}


def num_train(data: Data) -> int:
    return len(data.train[0]) if isinstance(data, TensorData) else len(data.train)


def num_test(data: Data) -> int:
    return len(data.test[0]) if isinstance(data, TensorData) else len(data.test)


def _rows(data: Data, split: str, index: Optional[torch.Tensor] = None) -> tuple:
    """The tensors of a split (images, and labels where there are any), or their rows ``index``."""
    if isinstance(data, TensorData):
        return data.rows(split, index)
    x, y = (data.train, data.train_labels) if split == "train" else (data.test, data.test_labels)
    tensors = (x,) if y is None else (x, y)
    return tensors if index is None else tuple(t[index.to(t.device)] for t in tensors)


def _keep(data: Data, split: str, index: torch.Tensor) -> Data:
    if isinstance(data, TensorData):
        return data.select(split, index)
    x, y = _rows(data, split, index) + (None,) * (2 - len(_rows(data, split)))
    return replace(data, **({"train": x, "train_labels": y} if split == "train" else {"test": x, "test_labels": y}))


def subset(data: Data, split: str, size: Optional[int], seed: int) -> Data:
    """``size`` datapoints of ``split`` drawn once with ``seed``, in their order (all of them for ``None``)."""
    count = num_train(data) if split == "train" else num_test(data)
    if size is None or size == count:
        return data
    if size > count:
        raise ConfigError(f"{split}-size {size} exceeds the {count} {split} datapoints of {data.name}: pass "
                          f"--{split}-size {count} or less")
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return _keep(data, split, chosen)


@dataclass
class Part:
    """A part of the training data: its rows, and how many datapoints it counts as in the objective."""

    rows: tuple
    size: float


@dataclass
class Prepared:
    """The data of a run as training and evaluation use it (see :func:`prepare`): rows (tensors of
    datapoints) and the arguments of model and guide made of them."""

    data: Data
    parts: list
    dynamic: bool
    train_eval: tuple  # rows of the fixed training subset for the train ELBO
    test: tuple  # rows of the test set (or its fixed subset)
    train_eval_arguments: tuple
    test_arguments: tuple
    probe: tuple  # two training datapoints as a training step passes them, for the model's checks


def prepare(model: nn.Module, data: Data, config, device: torch.device) -> Prepared:
    """The data as ``config`` asks, on ``device``: binarized images checked against a built-in
    likelihood, ``config.test_size`` test datapoints, the training parts and the train-ELBO subset."""
    data = subset(data, "test", config.test_size, TEST_SUBSET_SEED).to(device)
    dynamic = False
    if isinstance(data, ImageData):
        data, dynamic = prepare_binarization(data, config.binarize or "none")
        _check_support(data, config.likelihood, dynamic)
    if config.batch_size > num_train(data):
        raise ConfigError(f"batch-size {config.batch_size} exceeds the {num_train(data)} training datapoints: "
                          f"pass --batch-size {num_train(data)} or less")
    order = torch.randperm(num_train(data), generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))
    train_eval = _rows(data, "train", order[:TRAIN_EVAL_SIZE])
    parts = training_parts(model, data)
    probe = tuple(t[:2] for t in parts[0].rows)
    if dynamic:
        train_eval = (binarize_once(train_eval[0]),) + train_eval[1:]
        probe = (binarize_once(probe[0]),) + probe[1:]
    test = _rows(data, "test")
    return Prepared(data, parts, dynamic, train_eval, test, arguments(model, data, train_eval),
                    arguments(model, data, test), arguments(model, data, probe, training=True))


def _check_support(data: ImageData, likelihood: Optional[str], dynamic: bool) -> None:
    if likelihood is None:
        return
    if not dynamic:
        LIKELIHOODS[likelihood].check_support(data.train, f"the {data.name} training data")
    LIKELIHOODS[likelihood].check_support(data.test, f"the {data.name} test data")


def training_parts(model: nn.Module, data: Data) -> list[Part]:
    """The parts of the training data, the largest first (see the module's docstring). The labelled
    subset is drawn with :data:`LABELLED_SEED`, the same for every run."""
    labels = "none" if isinstance(data, TensorData) else labels_of(model)
    if labels == "none":
        return [Part(_rows(data, "train"), num_train(data))]
    if data.train_labels is None:
        raise ConfigError(f"{type(model).__name__} needs class labels, which {data.name} does not have: use data "
                          "with labels (--dataset mnist, or train_labels in a data file)")
    if labels == "all":
        return [Part((data.train, data.train_labels), len(data.train))]
    per_class = getattr(model, "labels_per_class", None)
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"{type(model).__name__} has labels = 'some' but no labels_per_class (a positive integer): "
                          "set it to the number of labelled images per class")
    labelled = labelled_subset(data.train_labels, per_class, LABELLED_SEED).to(data.train.device)
    unlabelled = torch.ones(len(data.train), dtype=torch.bool, device=data.train.device)
    unlabelled[labelled] = False
    weight = getattr(model, "labelled_weight", 1.0)
    return [Part((data.train[unlabelled],), int(unlabelled.sum())),
            Part((data.train[labelled], data.train_labels[labelled]), len(labelled) * weight)]


class Minibatches:
    """Each step's minibatch of every part, drawn by one generator: the order, and the Bernoulli draws
    of dynamically binarized images. The first part sets the epoch; the others are cycled alongside.

    :param shard: this process's share of a minibatch's positions (``None``: all of them).
    """

    def __init__(self, model: nn.Module, prepared: Prepared, batch_size: int, generator: torch.Generator,
                 shard: Callable[[torch.Tensor], Optional[torch.Tensor]], drop_last: bool = False):
        self.parts, self.dynamic, self.generator = prepared.parts, prepared.dynamic, generator
        self.batch_size, self.shard = batch_size, shard
        self.to_arguments = lambda rows: arguments(model, prepared.data, rows, training=True)
        self.main = IndexCycle(len(self.parts[0].rows[0]), batch_size, generator, drop_last)
        self.others: list[IndexCycle] = []

    @property
    def steps_per_epoch(self) -> int:
        return self.main.batches_per_pass

    def start_epoch(self, position: Optional[dict] = None) -> None:
        """Cycle the other parts afresh, or from where a stopped epoch left them (``position``)."""
        self.others = [IndexCycle(len(part.rows[0]), min(self.batch_size, len(part.rows[0])), self.generator)
                       for part in self.parts[1:]]
        if position is not None:
            self.main.restore(position["main"])
            for cycle, state in zip(self.others, position["others"]):
                cycle.restore(state)

    def state(self) -> dict:
        return {"main": self.main.state(), "others": [cycle.state() for cycle in self.others]}

    def draw(self) -> tuple[list, int]:
        """This process's share of the next minibatch of every part, as ``[(arguments, part size), ...]``,
        and the number of datapoints drawn in all."""
        batches, drawn = [], 0
        for part, cycle in zip(self.parts, [self.main, *self.others]):
            index = next(cycle)
            drawn += len(index) if cycle is self.main else min(self.batch_size, len(part.rows[0]))
            rows = tuple(t[index] for t in part.rows)  # every process draws the whole minibatch
            if self.dynamic:
                rows = (binarize(rows[0], self.generator),) + rows[1:]
            mine = self.shard(index)
            if mine is not None:
                rows = tuple(t[mine] for t in rows)
            batches.append((self.to_arguments(rows), part.size))
        return batches, drawn
