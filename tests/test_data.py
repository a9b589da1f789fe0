"""Finding real data offline: the Debian Fashion-MNIST files, folders, and clear errors."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import d3codec.data as data
from d3codec.errors import D3DatasetError


def test_fashion_mnist_is_unpacked_from_the_debian_folder(fake_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", fake_fashion_mnist)
    root = tmp_path / "root"
    real = data.load_dataset("fashion-mnist", root, download=False)
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert real.name == "fashion-mnist" and real.num_classes == 10 and real.image_shape == (1, 28, 28)
    assert real.train_images.shape == (30, 1, 28, 28) and real.mean == (0.2861,)
    assert real.train_targets.bincount().tolist() == [3] * 10
    x = real.sample_class(4, 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(real.test) == 20


def test_two_processes_unpacking_fashion_mnist_at_once_both_succeed(fake_fashion_mnist, tmp_path, monkeypatch):
    # both loaders are held inside the copy of the same file at the same moment, as two jobs started together are
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", fake_fashion_mnist)
    barrier, copy = threading.Barrier(2, timeout=10), shutil.copyfileobj

    def copy_together(fin, fout):
        copy(fin, fout)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass

    monkeypatch.setattr(data.shutil, "copyfileobj", copy_together)
    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(lambda _: data.load_dataset("fashion-mnist", tmp_path / "root", download=False), range(2)))
    assert [r.train_images.shape[0] for r in loaded] == [30, 30]
    assert sorted(p.name for p in (tmp_path / "root" / "FashionMNIST" / "raw").iterdir()) == sorted(data.FASHION_MNIST_FILES)


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(D3DatasetError) as err:
        data.load_dataset("fashion-mnist", tmp_path / "root", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "apt-get install dataset-fashion-mnist" in message
    assert "--data-root" in message


def test_image_folder_is_read_lazily_at_the_chosen_resolution(image_folder):
    real = data.load_dataset(str(image_folder), resolution=16)
    assert real.classes == ["class_0", "class_1", "class_2"] and real.image_shape == (3, 16, 16)
    assert real.train_images is None  # not loaded into memory
    x = real.sample_class(1, 3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 16, 16)


def test_imagenet_folder_layout(image_folder, tmp_path):
    root = tmp_path / "in"
    (root).mkdir()
    image_folder.rename(root / "train")
    real = data.load_dataset("imagenet", root, resolution=8)
    assert real.name == "imagenet" and real.image_shape == (3, 8, 8) and real.num_classes == 3


def test_unknown_dataset_and_missing_imagenet(tmp_path):
    with pytest.raises(D3DatasetError, match="unknown dataset"):
        data.load_dataset("no-such-set")
    with pytest.raises(D3DatasetError, match="ImageNet not found"):
        data.load_dataset("imagenet", tmp_path)


def test_class_without_images_is_refused(image_folder):
    (image_folder / "class_3").mkdir()
    (image_folder / "class_3" / "x.txt").write_text("not an image")
    with pytest.raises(D3DatasetError):
        data.load_dataset(str(image_folder), resolution=16)
