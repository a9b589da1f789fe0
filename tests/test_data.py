"""Finding real data offline: the Debian Fashion-MNIST files, folders, and clear errors."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from d3codec.data import folders, sources
from d3codec.data import real as real_data
from d3codec.errors import D3DatasetError


def test_fashion_mnist_is_unpacked_from_the_debian_folder(fake_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", fake_fashion_mnist)
    root = tmp_path / "root"
    real = sources.load_dataset("fashion-mnist", root, download=False)
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert real.name == "fashion-mnist" and real.num_classes == 10 and real.image_shape == (1, 28, 28)
    assert real.train_images.shape == (30, 1, 28, 28) and real.mean == (0.2861,)
    assert real.train_targets.bincount().tolist() == [3] * 10
    x = real.sample_class(4, 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(real.test) == 20


def test_two_processes_unpacking_fashion_mnist_at_once_both_succeed(fake_fashion_mnist, tmp_path, monkeypatch):
    # both loaders are held inside the copy of the same file at the same moment, as two jobs started together are
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", fake_fashion_mnist)
    barrier, copy = threading.Barrier(2, timeout=10), shutil.copyfileobj

    def copy_together(fin, fout):
        copy(fin, fout)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass

    monkeypatch.setattr(sources.shutil, "copyfileobj", copy_together)
    with ThreadPoolExecutor(2) as pool:
        loaded = list(
            pool.map(lambda _: sources.load_dataset("fashion-mnist", tmp_path / "root", download=False), range(2))
        )
    assert [r.train_images.shape[0] for r in loaded] == [30, 30]
    assert sorted(p.name for p in (tmp_path / "root" / "FashionMNIST" / "raw").iterdir()) == sorted(
        sources.FASHION_MNIST_FILES
    )


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(D3DatasetError) as err:
        sources.load_dataset("fashion-mnist", tmp_path / "root", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "apt-get install dataset-fashion-mnist" in message
    assert "`data_root`" in message


def test_image_folder_is_read_lazily_at_the_chosen_resolution(image_folder):
    real = sources.load_dataset(str(image_folder), resolution=16)
    assert real.classes == ["class_0", "class_1", "class_2"] and real.image_shape == (3, 16, 16)
    assert real.train_images is None  # not loaded into memory
    x = real.sample_class(1, 3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 16, 16)


def test_imagenet_folder_layout(image_folder, tmp_path):
    root = tmp_path / "in"
    (root).mkdir()
    image_folder.rename(root / "train")
    real = sources.load_dataset("imagenet", root, resolution=8)
    assert real.name == "imagenet" and real.image_shape == (3, 8, 8) and real.num_classes == 3


def test_unknown_dataset_and_missing_imagenet(tmp_path):
    with pytest.raises(D3DatasetError, match="unknown dataset"):
        sources.load_dataset("no-such-set")
    with pytest.raises(D3DatasetError, match="ImageNet not found"):
        sources.load_dataset("imagenet", tmp_path)


def test_class_without_images_is_refused(image_folder):
    (image_folder / "class_3").mkdir()
    (image_folder / "class_3" / "x.txt").write_text("not an image")
    with pytest.raises(D3DatasetError):
        sources.load_dataset(str(image_folder), resolution=16)


def imagenet_like(root, classes=4, per_class=6, val_per_class=1):
    """A tiny tree from benchmarks/make_imagenet_like.py (synset folders of varied JPEGs)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_imagenet_like.py"
    spec = importlib.util.spec_from_file_location("make_imagenet_like", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.make_tree(root, classes, per_class, val_per_class, seed=3)


def test_imagenet_like_tree_has_the_layout_and_modes_imagenet_has(tmp_path, monkeypatch):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    module, summary = imagenet_like(tmp_path / "in", classes=3, per_class=4)
    assert summary["files"] == 3 * 5 and summary["bytes"] > 0
    train = ImageFolder(str(tmp_path / "in" / "train"))
    assert train.classes == sorted(train.classes) and all(c.startswith("n") and len(c) == 9 for c in train.classes)
    assert len(train) == 12 and len(ImageFolder(str(tmp_path / "in" / "val"))) == 3
    # the modes and sizes ImageNet holds: force each kind once through the shares
    monkeypatch.setattr(module, "GRAYSCALE_SHARE", 1.0)
    assert module.render(0, 0, 0, 0)[1] == "L"
    monkeypatch.setattr(module, "GRAYSCALE_SHARE", 0.0)
    monkeypatch.setattr(module, "CMYK_SHARE", 1.0)
    assert module.render(0, 0, 0, 0)[0].mode == "CMYK"
    monkeypatch.setattr(module, "LARGE_SHARE", 1.0)
    assert max(module.render(0, 0, 0, 0)[0].size) >= 1700
    assert Image.open(next((tmp_path / "in" / "train").rglob("*.JPEG"))).format == "JPEG"


def test_draft_loader_reads_cmyk_grayscale_and_large_jpegs_as_rgb(tmp_path):
    from PIL import Image

    loader = folders.DraftLoader(32)
    for mode, size in (("CMYK", (60, 40)), ("L", (40, 60)), ("RGB", (2400, 1600))):
        path = tmp_path / f"{mode}.JPEG"
        Image.new(mode, size, 128 if mode == "L" else (10, 20, 30, 40)[: len(mode)]).save(path)
        image = loader(str(path))
        assert image.mode == "RGB" and min(image.size) >= 32
    assert max(image.size) <= 2400 // 8 * 2  # the large one decoded at a reduced scale


def test_folder_images_read_in_parallel_equal_those_read_in_process(tmp_path):
    imagenet_like(tmp_path / "in", classes=4, per_class=20)
    serial = sources.load_dataset("imagenet", tmp_path / "in", resolution=16, load_workers=0)
    parallel = sources.load_dataset("imagenet", tmp_path / "in", resolution=16, load_workers=2)
    indices = torch.arange(len(serial.train_targets)).flip(0)  # 80 images, over the parallel threshold
    assert len(indices) >= real_data.PARALLEL_READ_MIN
    assert torch.equal(serial.read_uint8(indices), parallel.read_uint8(indices))
    assert serial.test is not None and len(serial.test) == 4
    # a rank of `d3 compress --workers N` is started by spawn, and so are its DataLoader workers: they receive
    # the dataset pickled (rehearsal 2026-12-08: a class made inside a function could not be)
    import pickle

    again = pickle.loads(pickle.dumps(parallel.train))
    assert type(again).__name__ == "SafeImageFolder" and torch.equal(again[5][0], parallel.train[5][0])


def test_in_memory_subset_holds_only_its_classes_within_its_bytes(tmp_path):
    imagenet_like(tmp_path / "in", classes=4, per_class=6)
    real = sources.load_dataset("imagenet", tmp_path / "in", resolution=8, load_workers=0)
    held = real.in_memory([1, 3], per_class=5, generator=torch.Generator().manual_seed(0))
    assert held.partial and held.train_images.shape == (10, 3, 8, 8) and held.classes == real.classes
    assert [len(held.class_indices(c)) for c in range(4)] == [0, 5, 0, 5]
    capped = real.in_memory([0, 1, 2, 3], per_class=5, generator=torch.Generator(), max_bytes=3 * 8 * 8 * 4 * 2)
    assert capped.train_images.shape[0] == 4 * 2  # two images a class fit the bytes
    assert held.in_memory([1], 1, torch.Generator()) is held  # in memory already: itself
    fm = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(D3DatasetError):  # a full dataset must still have every class
        real_data.RealData(
            "x",
            ["a", "b"],
            (1, 2, 2),
            (0.5,),
            (0.5,),
            torch.zeros(4, dtype=torch.long),
            real_data.TensorImages(fm, torch.zeros(4, dtype=torch.long)),
            train_images=fm,
        )
