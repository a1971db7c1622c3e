import gzip
import hashlib
import http.server
import struct
import threading
from functools import partial

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import MNIST

from pyro_vae import ConfigError, DataError
from pyro_vae.batches import binarize, binarize_once, minibatches, prepare_binarization
from pyro_vae.datasets import BUNDLED_FREY_FACE, DATASETS, ImageData, load_dataset, load_frey_face, load_mnist, read_frey_face


def test_bundled_frey_face_split():
    data = load_frey_face()
    assert data.train.shape == (1765, 560) and data.test.shape == (200, 560)
    assert data.image_shape == (28, 20) and data.train.dtype == torch.float32
    assert 0.0 <= data.train.min() and data.train.max() <= 1.0
    assert abs(torch.cat([data.train, data.test]).mean().item() - 0.6057) < 1e-3  # the README's pixel mean
    again = load_frey_face()
    assert torch.equal(again.test, data.test)  # the split is fixed
    # every frame lands in exactly one split
    frames = read_frey_face(BUNDLED_FREY_FACE).reshape(1965, -1).float() / 255
    assert sorted(map(tuple, torch.cat([data.train, data.test]).tolist())) == sorted(map(tuple, frames.tolist()))


def write_mat(path, array):
    scipy.io.savemat(str(path), {"ff": array})
    return path


def test_user_frey_face_file_takes_precedence(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(560, 300), dtype=np.uint8)
    write_mat(tmp_path / "frey_rawface.mat", frames)
    data = load_frey_face(tmp_path)
    assert len(data.train) + len(data.test) == 300 and data.source == str(tmp_path / "frey_rawface.mat")


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable MATLAB file"),
    (b"\x00garbage" * 50, "not a readable MATLAB file"),
    ({"other": np.zeros((560, 4))}, "no array 'ff'"),
    ({"ff": np.zeros((561, 4), dtype=np.uint8)}, "has shape"),
    ({"ff": np.zeros((560, 0), dtype=np.uint8)}, "has shape"),
    ({"ff": np.full((560, 4), 300.0)}, "outside 0..255"),
])
def test_bad_frey_face_files_are_refused(tmp_path, content, message):
    path = tmp_path / "frey_rawface.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        scipy.io.savemat(str(path), content)
    with pytest.raises(DataError, match=message):
        read_frey_face(path)
    with pytest.raises(DataError):
        load_frey_face(tmp_path)


def test_frey_face_too_small_for_a_test_set(tmp_path):
    write_mat(tmp_path / "frey_rawface.mat", np.zeros((560, 150), dtype=np.uint8))
    with pytest.raises(DataError, match="too few"):
        load_frey_face(tmp_path)


def test_mnist_from_the_shared_copy(data_dir):
    data = load_mnist(data_dir, download=False)
    assert data.train.shape == (60000, 784) and data.test.shape == (10000, 784)
    assert data.train_labels.shape == (60000,) and set(data.test_labels.unique().tolist()) == set(range(10))
    assert abs(data.train.mean().item() - 0.1307) < 1e-3  # the README's pixel mean
    assert data.name == "mnist" and data.image_shape == (28, 28) and data.num_classes == 10


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", *images.shape) + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.tobytes()


@pytest.fixture
def mnist_server(tmp_path, monkeypatch):
    """A tiny MNIST served over HTTP from 127.0.0.1, as torchvision's mirrors serve it."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": idx_labels(rng.integers(0, 10, 30, dtype=np.uint8)),
        "t10k-images-idx3-ubyte.gz": idx_images(rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": idx_labels(rng.integers(0, 10, 12, dtype=np.uint8)),
    }
    resources = []
    for name, payload in files.items():
        compressed = gzip.compress(payload)
        (served / name).write_bytes(compressed)
        resources.append((name, hashlib.md5(compressed).hexdigest()))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(MNIST, "resources", resources)
    yield server
    server.shutdown()
    server.server_close()


def test_mnist_download_and_cache(tmp_path, mnist_server):
    cache = tmp_path / "cache"
    data = load_mnist(cache, download=True)
    assert data.train.shape == (30, 784) and data.test.shape == (12, 784)
    mnist_server.shutdown()  # the second load must come from the cache
    again = load_mnist(cache, download=True)
    assert torch.equal(again.train, data.train)


def test_mnist_missing_and_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # the discard port: nothing listens
    with pytest.raises(DataError, match="could not be downloaded"):
        load_mnist(tmp_path / "empty", download=True)
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", download=False)


@pytest.mark.parametrize("damage", ["truncate", "magic", "shape"])
def test_corrupt_mnist_is_refused(tmp_path, mnist_server, damage):
    load_mnist(tmp_path, download=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[:1000])
    elif damage == "magic":
        path.write_bytes(struct.pack(">HBB", 0, 8, 7) + raw[4:])
    else:
        path.write_bytes(idx_images(np.zeros((30, 27, 29), dtype=np.uint8)))
    with pytest.raises(DataError):
        load_mnist(tmp_path, download=False)


def test_unknown_dataset():
    assert DATASETS == ("frey-face", "mnist")
    with pytest.raises(ConfigError, match="frey-face, mnist, or pass the path of a .npz or .pt file"):
        load_dataset("cifar")


def test_minibatches_cover_the_data_once_and_reproducibly():
    x = torch.arange(23, dtype=torch.float32)[:, None]
    batches = list(minibatches(x, 5, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).flatten().tolist()) == list(range(23))
    again = list(minibatches(x, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert [len(b) for b in minibatches(x, 5, torch.Generator(), drop_last=True)] == [5, 5, 5, 5]


def test_dynamic_binarization_draws_anew():
    x = torch.full((200, 50), 0.3)
    generator = torch.Generator().manual_seed(0)
    first = torch.cat(list(minibatches(x, 50, generator, dynamic_binarization=True)))
    second = torch.cat(list(minibatches(x, 50, generator, dynamic_binarization=True)))
    assert set(first.unique().tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    assert abs(first.mean().item() - 0.3) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_binarization_draws_what_torch_bernoulli_draws(dtype):
    """On the CPU the uniform-and-compare draw is torch.bernoulli's, bit for bit, and leaves the
    generator where torch.bernoulli leaves it (so seeded runs keep their draws)."""
    grey = torch.rand(300, 784, generator=torch.Generator().manual_seed(1)).to(dtype)
    ours, torchs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = binarize(grey, ours)
    assert drawn.dtype == dtype and torch.equal(drawn, torch.bernoulli(grey, generator=torchs))
    assert torch.equal(ours.get_state(), torchs.get_state())


def test_prepare_binarization():
    data = load_frey_face()
    static, dynamic = prepare_binarization(data, "static")
    assert not dynamic and set(static.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.test, prepare_binarization(data, "dynamic")[0].test)  # same fixed test draw
    kept, dynamic = prepare_binarization(data, "dynamic")
    assert dynamic and torch.equal(kept.train, data.train)
    assert prepare_binarization(data, "none")[0] is data
    assert torch.equal(binarize_once(data.test), binarize_once(data.test))
    with pytest.raises(ConfigError):
        prepare_binarization(data, "sometimes")


# ---- a user's own data -------------------------------------------------------------------------

def own_images(count=7, shape=(4, 3), seed=0):
    """uint8 images and integer labels 0..2, as a user would have them."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, 3, count)


def test_from_arrays_flattens_and_scales():
    train, train_labels = own_images(7)
    test, test_labels = own_images(5, seed=1)
    data = ImageData.from_arrays(train, test, train_labels, test_labels, name="mine")
    assert data.name == "mine" and data.image_shape == (4, 3) and data.data_dim == 12
    assert data.train.shape == (7, 12) and data.test.shape == (5, 12) and data.train.dtype == torch.float32
    assert torch.equal(data.train, torch.from_numpy(train.reshape(7, 12)).float() / 255)
    assert data.train_labels.dtype == torch.int64 and data.test_labels.tolist() == test_labels.tolist()
    assert data.num_classes == 1 + max(train_labels.max(), test_labels.max()) and not data.is_binary()
    # torch tensors, floats, bools and a channel axis are taken too
    floats = ImageData.from_arrays(torch.from_numpy(train).double()[:, None] / 255, test[..., None])
    assert floats.image_shape == (4, 3) and torch.allclose(floats.train, data.train)
    assert floats.train.dtype == torch.float32 and floats.train_labels is None and floats.num_classes is None
    binary = ImageData.from_arrays(train > 127, test > 127)
    assert binary.is_binary() and torch.equal(binary.train, (data.train > 127 / 255).float())


@pytest.mark.parametrize("dim, given, expected", [
    (16, None, (4, 4)),  # a square
    (12, None, (1, 12)),  # not a square: one row
    (12, (3, 4), (3, 4)),
    (12, [2, 6], (2, 6)),
])
def test_image_shape_of_rows(dim, given, expected):
    rows = np.zeros((3, dim), dtype=np.float32)
    assert ImageData.from_arrays(rows, rows, image_shape=given).image_shape == expected


GOOD = np.zeros((4, 3, 2), dtype=np.uint8)


@pytest.mark.parametrize("change, message", [
    (dict(train=np.zeros(6, dtype=np.uint8)), r"train images have shape \(6,\): pass \(N, H, W\)"),
    (dict(test=np.zeros((2, 3, 3, 2, 1), dtype=np.uint8)), r"test images have shape \(2, 3, 3, 2, 1\)"),
    (dict(train=np.zeros((4, 3, 2, 3), dtype=np.uint8)), "several colour channels: convert to one grey channel"),
    (dict(test=np.zeros((4, 7), dtype=np.uint8)), r"train images are 3x2 \(6 pixels\) but test images are 7 pixels"),
    (dict(test=np.zeros((4, 2, 3), dtype=np.uint8)), "both splits must hold images of one size"),
    (dict(test=np.zeros((0, 3, 2), dtype=np.uint8)), "test images are empty"),
    (dict(train=np.zeros((4, 0), dtype=np.uint8)), "have no pixels"),
    (dict(train=np.full((4, 6), "a")), "not numbers"),
    (dict(train=np.array([[{}]] * 4, dtype=object)), "dtype object, not numbers"),
    (dict(train=torch.zeros(4, 6, dtype=torch.complex64)), "pass real uint8"),
    (dict(train=np.zeros((4, 6), dtype=complex)), "complex128: pass real uint8"),
    (dict(train=np.zeros((4, 6), dtype=np.int64)), r"int64, which is ambiguous: pass uint8 0..255 .* or floats in \[0, 1\]"),
    (dict(train=np.full((4, 6), np.nan, dtype=np.float32)), "train images hold NaN or infinite values"),
    (dict(test=np.full((4, 6), np.inf)), "test images hold NaN or infinite values"),
    (dict(train=np.full((4, 6), 255.0)), r"values in \[255, 255\], outside \[0, 1\]: divide 0..255 values by 255"),
    (dict(train=np.full((4, 6), -0.5)), "or rescale to"),
    (dict(train_labels=np.zeros(3, dtype=int)), r"train labels have shape \(3,\) for 4 images: pass one integer label"),
    (dict(test_labels=np.zeros((4, 1), dtype=int)), r"test labels have shape \(4, 1\)"),
    (dict(train_labels=np.zeros(4)), "train labels are of dtype float64: pass integer class indices"),
    (dict(train_labels=torch.zeros(4)), "labels are of dtype torch.float32"),
    (dict(train_labels=torch.zeros(4, dtype=torch.bool)), "labels are of dtype torch.bool"),
    (dict(test_labels=np.array([0, 1, -1, 2])), "test labels include -1: labels must be class indices"),
    (dict(image_shape=(2, 2)), r"image_shape \(2, 2\) does not hold the images' 6 pixels"),
    (dict(image_shape=(6,)), "height \\* width = 6"),
    (dict(image_shape="ab"), "does not hold"),
    (dict(train=None), "no train images"),
])
def test_from_arrays_refuses(change, message):
    arguments = dict(train=GOOD, test=GOOD, train_labels=None, test_labels=None, image_shape=None) | change
    with pytest.raises(DataError, match=message) as error:
        ImageData.from_arrays(**arguments)
    assert "\n" not in str(error.value)


def save(path, contents):
    """``contents`` (numpy arrays) as a .npz or, as tensors, a .pt."""
    if path.suffix == ".npz":
        np.savez(path, **contents)
    else:
        torch.save({key: torch.as_tensor(value) if isinstance(value, np.ndarray) else value
                    for key, value in contents.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_own_data_file_round_trip(tmp_path, suffix):
    train, train_labels = own_images(7)
    test, test_labels = own_images(5, seed=1)
    contents = dict(train=train.reshape(7, 12), test=test.reshape(5, 12), train_labels=train_labels,
                    test_labels=test_labels, image_shape=np.array([4, 3]) if suffix == ".npz" else (4, 3))
    path = save(tmp_path / f"faces{suffix}", contents)
    expected = ImageData.from_arrays(train, test, train_labels, test_labels)
    for data in (ImageData.from_file(path), load_dataset(path), load_dataset(str(path))):
        assert data.name == "faces" and data.source == str(path) and data.image_shape == (4, 3)
        for field in ("train", "test", "train_labels", "test_labels"):
            assert torch.equal(getattr(data, field), getattr(expected, field)), field
    # labels and image_shape are optional
    rows = save(tmp_path / f"rows{suffix}", dict(train=train.reshape(7, 12), test=test.reshape(5, 12)))
    data = ImageData.from_file(rows)
    assert data.image_shape == (1, 12) and data.train_labels is None and torch.equal(data.train, expected.train)


@pytest.mark.parametrize("suffix, contents, message", [
    (".npz", dict(train=GOOD), r"holds no 'test' \(it holds \['train'\]\): save the images under the keys"),
    (".pt", dict(images=GOOD, labels=GOOD), r"holds no 'train' or 'test' \(it holds \['images', 'labels'\]\)"),
    (".npz", dict(train=np.array([[{}]] * 4, dtype=object), test=GOOD), "pickled Python objects"),
    (".npz", dict(train=GOOD, test=np.full((4, 6), np.nan)), r"rows.npz: test images hold NaN"),
    (".pt", dict(train=GOOD, test=np.full((4, 6), 2.0)), r"rows.pt: test images hold values in \[2, 2\]"),
    (".pt", dict(train=GOOD, test=GOOD, train_labels=np.zeros(4)), "rows.pt: train labels are of dtype"),
    (".npz", dict(train=GOOD, test=GOOD, image_shape=np.array([2.0, 3.0])), "expected two integers"),
    (".npz", dict(train=GOOD, test=GOOD, image_shape=np.array([2, 2])), "does not hold the images' 6 pixels"),
])
def test_bad_own_data_files_are_refused(tmp_path, suffix, contents, message):
    path = save(tmp_path / f"rows{suffix}", contents)
    with pytest.raises(DataError, match=message) as error:
        ImageData.from_file(path)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=message):  # the command line's --dataset FILE reads it so
        load_dataset(str(path))


def test_a_misspelt_key_is_refused_as_images_and_as_tensors(tmp_path):
    path = save(tmp_path / "rows.npz", dict(train=GOOD, test=GOOD, train_label=np.zeros(4, dtype=int)))
    with pytest.raises(DataError, match=r"keys \['train_label'\] that are not read: keep only train, test"):
        ImageData.from_file(path)
    with pytest.raises(DataError, match="not a test_<name> for every train_<name>: save test_label too"):
        load_dataset(str(path))  # a key besides the images' makes it TensorData, which pairs every array


class Opaque:
    """Not a tensor: a weights-only load must refuse to unpickle it."""


def test_unreadable_own_data_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist: pass the path of a .npz or .pt file"):
        ImageData.from_file(tmp_path / "absent.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.pt"))
    (tmp_path / "data.csv").write_text("0,1\n")
    for name in ("data.csv", "data.npy"):
        with pytest.raises(DataError, match=r"cannot read .* save the data as .npz \(np.savez\) or .pt"):
            ImageData.from_file(tmp_path / name)
    with pytest.raises(DataError, match="cannot read .csv"):
        load_dataset(str(tmp_path / "data.csv"))  # an existing file is read as one, not taken for a name
    (tmp_path / "text.npz").write_text("not a zip archive")
    with pytest.raises(DataError, match="text.npz holds pickled Python objects|not a readable .npz"):
        ImageData.from_file(tmp_path / "text.npz")
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(DataError, match="not a readable .npz file"):
        ImageData.from_file(tmp_path / "zip.npz")
    with open(tmp_path / "one.npz", "wb") as file:
        np.save(file, GOOD)
    with pytest.raises(DataError, match=r"one unnamed array: save named arrays with np.savez\(path, train=..."):
        ImageData.from_file(tmp_path / "one.npz")
    torch.save({"train": Opaque(), "test": torch.zeros(2, 3)}, tmp_path / "objects.pt")
    with pytest.raises(DataError, match="objects other than tensors, which are not read"):
        ImageData.from_file(tmp_path / "objects.pt")
    torch.save(torch.zeros(4, 6), tmp_path / "tensor.pt")
    with pytest.raises(DataError, match=r"holds a Tensor, not a dict: torch.save\(\{'train'"):
        ImageData.from_file(tmp_path / "tensor.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(DataError, match="not a readable .pt file"):
        ImageData.from_file(tmp_path / "text.pt")


class GreyImages(torch.utils.data.Dataset):
    """A torchvision-style data set: PIL images (mode L) and int labels, an optional transform."""

    def __init__(self, images, labels=None, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        image = self.transform(image) if self.transform else image
        return image if self.labels is None else (image, int(self.labels[index]))


def test_from_datasets_stacks_torchvision_style_items():
    from torchvision.transforms import ToTensor

    train, train_labels = own_images(7)
    test, test_labels = own_images(5, seed=1)
    expected = ImageData.from_arrays(train, test, train_labels, test_labels, name="digits")
    tensors = ImageData.from_datasets(GreyImages(train, train_labels, ToTensor()),
                                      GreyImages(test, test_labels, ToTensor()), name="digits")
    pil = ImageData.from_datasets(GreyImages(train, train_labels), GreyImages(test, test_labels), progress=True)
    for data in (tensors, pil):
        assert data.image_shape == (4, 3)
        for field in ("train", "test", "train_labels", "test_labels"):
            assert torch.equal(getattr(data, field), getattr(expected, field)), field
    assert tensors.name == "digits" and "GreyImages" in tensors.source
    # a TensorDataset yields 1-tuples (x,) or pairs; an iterable data set has no length
    x, y = torch.from_numpy(train), torch.from_numpy(train_labels)
    single = ImageData.from_datasets(torch.utils.data.TensorDataset(x), torch.utils.data.TensorDataset(x))
    assert single.train_labels is None and torch.equal(single.train, expected.train)
    pairs = ImageData.from_datasets(torch.utils.data.TensorDataset(x, y), GreyImages(test, test_labels))
    assert torch.equal(pairs.train_labels, expected.train_labels)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(x)

    assert torch.equal(ImageData.from_datasets(Stream(), Stream()).train, expected.train)


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


IMAGE = torch.zeros(1, 4, 3)


@pytest.mark.parametrize("items, message", [
    ([], "the train data set is empty"),
    ([(IMAGE, 0), IMAGE], "train item 1 lacks a label, item 0 has: yield images alone or"),
    ([IMAGE, (IMAGE, 1)], "train item 1 has a label, item 0 lacks"),
    ([IMAGE, torch.zeros(1, 3, 4)], r"train item 1 is torch.float32 of shape \(1, 3, 4\), item 0 torch.float32 of "
                                    r"\(1, 4, 3\): give all images one size"),
    ([IMAGE, IMAGE.to(torch.uint8)], "train item 1 is torch.uint8"),
    ([(IMAGE, 0), (IMAGE, 0.5)], "train item 1 has the label 0.5: yield integer class indices"),
    ([(IMAGE, True)], "has the label True"),
    ([(IMAGE, torch.tensor([1, 2]))], "has the label tensor"),
    ([(IMAGE, 0, "extra")], "train item 0 is a tuple of 3: yield an image or an"),
    (["a"], "train item 0 is a str, not an image"),
    ([IMAGE + 255], r"train images hold values in \[255, 255\]"),  # and then everything from_arrays checks
    ([(IMAGE, -1)], "train labels include -1"),
])
def test_from_datasets_refuses(items, message):
    with pytest.raises(DataError, match=message):
        ImageData.from_datasets(Items(items), Items([IMAGE]))


def test_built_in_data_sets_pass_the_same_checks():
    data = load_frey_face()
    assert data.name == "frey-face" and data.source.endswith("frey_rawface.mat") and data.num_classes is None
    assert not data.is_binary() and prepare_binarization(data, "static")[0].is_binary()
