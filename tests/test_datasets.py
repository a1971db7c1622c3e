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
from pyro_vae.datasets import (
    BUNDLED_FREY_FACE,
    binarize_once,
    load_dataset,
    load_frey_face,
    load_mnist,
    minibatches,
    prepare_binarization,
    read_frey_face,
)


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
    with pytest.raises(ConfigError, match="frey-face, mnist"):
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
