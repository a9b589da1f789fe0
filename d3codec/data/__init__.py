"""Real datasets: finding them offline, loading them through torchvision, sampling them per class.

``load_dataset(name, data_root)`` (data.sources) returns a :class:`RealData` (data.real). Small datasets
(Fashion-MNIST, MNIST, CIFAR) are held in memory as uint8; folder datasets (ImageNet, any class-per-folder
tree, data.folders) stay on disk, so ImageNet never has to fit in memory: the images a method asks for are
decoded by ``load_workers`` DataLoader processes in parallel, and the per-class caches of
:class:`ClassSampler` hold at most REAL_CACHE_BYTES of decoded uint8 images.
"""

from d3codec.data.real import REAL_CACHE_BYTES, ClassSampler, Normalisation, RealData, TensorImages
from d3codec.data.sources import DATASETS, NORMALISATION, archive_dataset, default_data_root, load_dataset

__all__ = [
    "ClassSampler",
    "Normalisation",
    "RealData",
    "TensorImages",
    "REAL_CACHE_BYTES",
    "DATASETS",
    "NORMALISATION",
    "archive_dataset",
    "default_data_root",
    "load_dataset",
]
