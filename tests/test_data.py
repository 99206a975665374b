"""Tests for funcnn.data: IDX files, MNIST loading and download, preprocessing, toy sets."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tempfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import funcnn.random as fnr
from funcnn.data import (
    MNIST,
    ChecksumError,
    IDXError,
    load_mnist,
    one_hot,
    random_shift,
    read_idx,
    regression,
    spirals,
    standardize,
    train_val_split,
    write_idx,
    xor,
)
from funcnn.data import mnist as mnist_module

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]
NAMES = mnist_module.FILES


def _sample(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


# ---------------------------------------------------------------- IDX format


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_idx_round_trip_every_dtype(tmp_path, dtype, compress):
    a = _sample(np.random.default_rng(0), dtype, (3, 4, 5))
    path = tmp_path / "a.idx"
    write_idx(path, a, compress=compress)
    b = read_idx(path)
    assert b.dtype == a.dtype and b.dtype.isnative
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    assert b.flags.writeable


@settings(max_examples=60, deadline=None)
@given(
    a=hnp.arrays(
        dtype=st.sampled_from(DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    ),
    compress=st.booleans(),
)
def test_idx_round_trip_property(a, compress):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.idx"
        write_idx(path, a, compress=compress)
        b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)  # treats NaN == NaN, as the bits survive


def test_idx_big_endian_layout_matches_spec(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.array([[1, 2, 3]], dtype=np.int16))
    assert path.read_bytes() == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])
    # Non-native input byte order is stored the same way.
    write_idx(tmp_path / "y.idx", np.array([[1, 2, 3]], dtype="<i2"))
    assert (tmp_path / "y.idx").read_bytes() == path.read_bytes()


def test_idx_compression_follows_extension_and_reading_follows_content(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "a.idx", a)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a.idx").read_bytes()[:2] == b"\x00\x00"
    # A gzip file without .gz and a raw file with .gz are both read by content.
    write_idx(tmp_path / "gz-inside", a, compress=True)
    write_idx(tmp_path / "raw-inside.gz", a, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "gz-inside"), a)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "raw-inside.gz")), a)


def test_write_idx_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "a.idx"
    write_idx(path, np.zeros(3, np.float32))
    write_idx(path, np.ones(5, np.float64))
    np.testing.assert_array_equal(read_idx(path), np.ones(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx"]  # no temp files left


@pytest.mark.parametrize("dtype", ["bool", "int64", "uint16", "complex64", "float16"])
def test_write_idx_rejects_unsupported_dtypes(tmp_path, dtype):
    with pytest.raises(TypeError, match="IDX cannot store dtype"):
        write_idx(tmp_path / "a.idx", np.zeros(2, dtype=dtype))
    assert list(tmp_path.iterdir()) == []


def _raw_idx(a: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a"
        write_idx(path, a, compress=False)
        return path.read_bytes()


GOOD = np.arange(24, dtype=np.int32).reshape(2, 3, 4)


@pytest.mark.parametrize(
    "content, problem",
    [
        (_raw_idx(GOOD)[:-1], "truncated data"),
        (_raw_idx(GOOD)[:6], "truncated header"),
        (b"\x00\x00", "truncated header"),
        (b"", "truncated header"),
        (b"\x01" + _raw_idx(GOOD)[1:], "bad magic number"),
        (b"\x00\x00\x07" + _raw_idx(GOOD)[3:], "unknown type code 0x07"),
        (_raw_idx(GOOD) + b"\x00", "1 trailing bytes"),
        (gzip.compress(_raw_idx(GOOD))[:-9], "truncated gzip"),
        (gzip.compress(_raw_idx(GOOD)) + b"junk", "corrupt gzip"),
        (gzip.compress(_raw_idx(GOOD) + b"\x00\x00"), "2 trailing bytes"),
        (gzip.compress(_raw_idx(GOOD)[:-4]), "truncated data"),
    ],
    # ids of their own: gzip's bytes hold a time stamp, which differs between pytest -n workers
    ids=lambda v: v if isinstance(v, str) else "gzip" if v[:2] == b"\x1f\x8b" else "raw",
)
def test_read_idx_rejects_malformed_files(tmp_path, content, problem):
    path = tmp_path / "bad-file"
    path.write_bytes(content)
    with pytest.raises(IDXError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_read_idx_rejects_corrupt_gzip_body(tmp_path):
    data = bytearray(gzip.compress(_raw_idx(np.arange(1000, dtype=np.float64))))
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path = tmp_path / "corrupt.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IDXError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_error_pickles():
    err = pickle.loads(pickle.dumps(IDXError("/some/file", "a problem")))
    assert isinstance(err, IDXError)
    assert (err.path, err.problem, str(err)) == ("/some/file", "a problem", "/some/file: a problem")


def test_read_idx_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- MNIST


def _tiny_arrays(seed: int = 0, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def _write_folder(folder: Path, arrays: dict[str, np.ndarray], gz=(True, False, True, False)):
    folder.mkdir(parents=True, exist_ok=True)
    for (name, a), compress in zip(arrays.items(), gz, strict=True):
        write_idx(folder / (name + ".gz" if compress else name), a)
    return arrays


def _check_matches(data: MNIST, arrays: dict[str, np.ndarray], flatten: bool = True):
    assert isinstance(data, MNIST)
    for x, raw in ((data.x_train, arrays[NAMES[0]]), (data.x_test, arrays[NAMES[2]])):
        assert x.dtype == np.float32
        assert x.shape == ((len(raw), 784) if flatten else raw.shape)
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_allclose(x.reshape(raw.shape), raw / 255.0, rtol=1e-6)
    for y, raw in ((data.y_train, arrays[NAMES[1]]), (data.y_test, arrays[NAMES[3]])):
        assert y.dtype == np.int64 and y.shape == raw.shape
        np.testing.assert_array_equal(y, raw)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No FUNCNN_DATA, a private HOME and cache, and a network that always fails."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("FUNCNN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))

    def no_network(url):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(mnist_module, "_fetch", no_network)
    return home


@pytest.mark.parametrize("flatten", [True, False])
def test_load_mnist_from_path(offline, tmp_path, flatten):
    arrays = _write_folder(tmp_path / "digits", _tiny_arrays())
    data = load_mnist(tmp_path / "digits", flatten=flatten)
    _check_matches(data, arrays, flatten)


def test_load_mnist_path_does_not_fall_back(offline, tmp_path, monkeypatch):
    _write_folder(tmp_path / "env", _tiny_arrays())
    monkeypatch.setenv("FUNCNN_DATA", str(tmp_path / "env"))
    partial = tmp_path / "partial"
    partial.mkdir()
    write_idx(partial / NAMES[0], _tiny_arrays()[NAMES[0]])
    for folder in (partial, tmp_path / "absent"):
        with pytest.raises(FileNotFoundError) as info:
            load_mnist(folder)
        message = str(info.value)
        assert str(folder) in message and str(tmp_path / "env") not in message
        assert "path=" in message and "FUNCNN_DATA" in message
    with pytest.raises(FileNotFoundError, match=f"missing {NAMES[1]}, {NAMES[2]}"):
        load_mnist(partial)


@pytest.mark.parametrize("subfolder", ["", "mnist"])
def test_load_mnist_from_funcnn_data(offline, tmp_path, monkeypatch, subfolder):
    arrays = _write_folder(tmp_path / "data" / subfolder, _tiny_arrays(1))
    monkeypatch.setenv("FUNCNN_DATA", str(tmp_path / "data"))
    _check_matches(load_mnist(download=False), arrays)


def test_load_mnist_from_xdg_cache(offline, tmp_path, monkeypatch):
    arrays = _write_folder(tmp_path / "xdg" / "funcnn" / "mnist", _tiny_arrays(2))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("FUNCNN_DATA", str(tmp_path / "empty"))  # searched first, holds nothing
    _check_matches(load_mnist(download=False), arrays)


def test_load_mnist_from_home_cache(offline):
    arrays = _write_folder(offline / ".cache" / "funcnn" / "mnist", _tiny_arrays(3))
    _check_matches(load_mnist(download=False), arrays)


def test_load_mnist_not_found_lists_every_place(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCNN_DATA", str(tmp_path / "data"))
    for download in (False, True):
        with pytest.raises(FileNotFoundError) as info:
            load_mnist(download=download)
        message = str(info.value)
        for place in (
            tmp_path / "data",
            tmp_path / "data" / "mnist",
            offline / ".cache" / "funcnn" / "mnist",
        ):
            assert str(place) in message
        assert all(name in message for name in NAMES)
        assert "FUNCNN_DATA" in message and "path=" in message
    # With download=True, every mirror's failure is reported too.
    for base in mnist_module.MIRRORS:
        assert base + NAMES[0] + ".gz" in message
    assert "no network in tests" in message


def _fake_mirrors(monkeypatch, arrays, *, bad_sum=False, down=()):
    """Serve gzip files of ``arrays`` from two fake mirrors; returns the list of fetched URLs."""
    files = {}
    for name, a in arrays.items():
        with tempfile.TemporaryDirectory() as folder:
            write_idx(Path(folder) / "f.gz", a)
            files[name + ".gz"] = (Path(folder) / "f.gz").read_bytes()
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    if bad_sum:
        md5 = {name: "0" * 32 for name in md5}
    mirrors = ("https://first.example/mnist/", "https://second.example/mnist/")
    calls = []

    def fake_fetch(url):
        calls.append(url)
        base, name = url.rsplit("/", 1)
        if base + "/" in down:
            raise urllib.error.URLError("connection refused")
        return files[name]

    monkeypatch.setattr(mnist_module, "MIRRORS", mirrors)
    monkeypatch.setattr(mnist_module, "MD5", md5)
    monkeypatch.setattr(mnist_module, "_fetch", fake_fetch)
    return calls, files


def test_download_into_cache(offline, monkeypatch):
    arrays = _tiny_arrays(4)
    calls, files = _fake_mirrors(monkeypatch, arrays)
    _check_matches(load_mnist(), arrays)
    cache = offline / ".cache" / "funcnn" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (cache / name).read_bytes() == data
    assert calls == [f"https://first.example/mnist/{name}" for name in files]
    _check_matches(load_mnist(), arrays)  # the second call reads the cache
    assert len(calls) == len(files)


def test_download_fetches_only_missing_files(offline, monkeypatch):
    arrays = _tiny_arrays(5)
    calls, _ = _fake_mirrors(monkeypatch, arrays)
    cache = offline / ".cache" / "funcnn" / "mnist"
    cache.mkdir(parents=True)
    write_idx(cache / NAMES[0], arrays[NAMES[0]])  # already cached, raw
    _check_matches(load_mnist(), arrays)
    assert calls == [f"https://first.example/mnist/{name}.gz" for name in NAMES[1:]]


def test_download_falls_through_to_next_mirror(offline, monkeypatch):
    arrays = _tiny_arrays(6)
    calls, files = _fake_mirrors(monkeypatch, arrays, down=("https://first.example/mnist/",))
    _check_matches(load_mnist(), arrays)
    expected = []
    for name in files:
        expected += [f"https://first.example/mnist/{name}", f"https://second.example/mnist/{name}"]
    assert calls == expected


def test_download_checksum_mismatch(offline, monkeypatch):
    arrays = _tiny_arrays(7)
    calls, files = _fake_mirrors(monkeypatch, arrays, bad_sum=True)
    with pytest.raises(ChecksumError) as info:
        load_mnist()
    message = str(info.value)
    first = NAMES[0] + ".gz"
    assert first in message
    assert "0" * 32 in message and hashlib.md5(files[first]).hexdigest() in message
    assert len(calls) == 2  # both mirrors tried for the first file, then stop
    cache = offline / ".cache" / "funcnn" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_failure_of_one_file_writes_nothing(offline, monkeypatch):
    arrays = _tiny_arrays(8)
    _, files = _fake_mirrors(monkeypatch, arrays)
    serve = mnist_module._fetch

    def flaky(url):
        if url.endswith(NAMES[3] + ".gz"):
            raise TimeoutError("timed out")
        return serve(url)

    monkeypatch.setattr(mnist_module, "_fetch", flaky)
    with pytest.raises(FileNotFoundError, match="timed out"):
        load_mnist()
    cache = offline / ".cache" / "funcnn" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_load_mnist_count_mismatch_names_both_files(offline, tmp_path):
    arrays = _tiny_arrays()
    arrays[NAMES[1]] = arrays[NAMES[1]][:19]
    _write_folder(tmp_path / "d", arrays)
    with pytest.raises(ValueError, match="20 images in .* but 19 labels in") as info:
        load_mnist(tmp_path / "d")
    assert NAMES[0] in str(info.value) and NAMES[1] in str(info.value)


def test_load_mnist_wrong_image_shape_names_file(offline, tmp_path):
    arrays = _tiny_arrays()
    arrays[NAMES[2]] = np.zeros((10, 28, 27), np.uint8)
    _write_folder(tmp_path / "d", arrays)
    with pytest.raises(ValueError, match=r"shape \(10, 28, 27\)") as info:
        load_mnist(tmp_path / "d")
    assert NAMES[2] in str(info.value)


def test_load_mnist_corrupt_file_raises_idx_error(offline, tmp_path):
    folder = tmp_path / "d"
    _write_folder(folder, _tiny_arrays(), gz=(False,) * 4)
    path = folder / NAMES[3]
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IDXError, match="truncated data"):
        load_mnist(folder)


@pytest.mark.mnist
def test_real_mnist():
    if not os.environ.get("FUNCNN_DATA"):
        pytest.skip("set FUNCNN_DATA to a folder holding the MNIST files to run this test")
    try:
        data = load_mnist(download=False)
    except FileNotFoundError as err:
        pytest.skip(f"FUNCNN_DATA does not hold the MNIST files: {err}")
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    for x in (data.x_train, data.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    for y in (data.y_train, data.y_test):
        assert y.dtype == np.int64
        np.testing.assert_array_equal(np.unique(y), np.arange(10))


# ---------------------------------------------------------------- preprocessing


def test_one_hot_values_shape_dtype():
    out = one_hot(np.array([2, 0, 1, 2]), 3)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out, np.eye(3, dtype=np.float32)[[2, 0, 1, 2]])
    assert one_hot(np.array([[1, 0]], np.uint8), 2, dtype="int32").shape == (1, 2, 2)
    assert one_hot(np.array([1]), 2, dtype="int32").dtype == np.int32


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, 5, 2], r"labels\[2\] = 5"),
        ([0, -1], r"labels\[1\] = -1"),
        ([[0, 1], [3, 0]], r"labels\[\(1, 0\)\] = 3"),
    ],
)
def test_one_hot_out_of_range(labels, match):
    with pytest.raises(ValueError, match=r"\[0, 3\).*" + match):
        one_hot(np.array(labels), 3)


def test_one_hot_bad_arguments():
    with pytest.raises(TypeError, match="integer dtype"):
        one_hot(np.array([0.0, 1.0]), 2)
    with pytest.raises(TypeError, match="integer dtype"):
        one_hot(np.array([True, False]), 2)
    with pytest.raises(TypeError, match="k must be a positive integer"):
        one_hot(np.array([0]), 2.0)
    with pytest.raises(ValueError, match="k must be positive; got 0"):
        one_hot(np.array([0]), 0)


def test_one_hot_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    labels = jnp.array([1, 0, 2])
    expected = np.eye(3, dtype=np.float32)[[1, 0, 2]]
    out = one_hot(labels, 3)
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(np.asarray(out), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda y: one_hot(y, 3))(labels)), expected)
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        one_hot(jnp.array([0, 7]), 3)


def test_standardize_fits_and_reuses_statistics():
    rng = np.random.default_rng(0)
    x_train = (rng.standard_normal((500, 4)) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype(np.float32)
    x_test = (rng.standard_normal((50, 4)) * 3 + 1).astype(np.float32)
    z, mean, std = standardize(x_train)
    assert z.dtype == np.float32 and mean.shape == std.shape == (4,)
    np.testing.assert_allclose(mean, x_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, x_train.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-4)
    z_test, mean2, std2 = standardize(x_test, mean, std)
    np.testing.assert_allclose(z_test, (x_test - mean) / std, rtol=1e-5)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(std2, std)


def test_standardize_constant_feature_is_only_centred():
    x = np.array([[0, 1], [0, 3], [0, 5]], np.uint8)  # integer input, first column constant
    z, mean, std = standardize(x)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(std[0], 0)
    z_new, _, _ = standardize(np.array([[7, 3]], np.uint8), mean, std)
    np.testing.assert_allclose(z_new, [[7, 0]])
    assert np.all(np.isfinite(z))


def test_standardize_jax_strict_rank_promotion():
    jax = pytest.importorskip("jax")
    x = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    expected = standardize(x)
    with jax.numpy_rank_promotion("raise"):
        z, mean, std = standardize(jax.numpy.asarray(x))
        one_hot(jax.numpy.asarray([0, 2]), 3)
    assert isinstance(z, jax.Array)
    for got, want in zip((z, mean, std), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_standardize_bad_arguments():
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="both mean and std"):
        standardize(x, mean=np.zeros(2))
    with pytest.raises(ValueError, match="expected x.shape"):
        standardize(x, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="n >= 1"):
        standardize(np.ones((0, 2)))


def test_train_val_split_sizes_and_content():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    y = np.arange(50)
    x_tr, y_tr, x_val, y_val = train_val_split(0, x, y, val_fraction=0.2)
    assert (len(x_tr), len(y_tr), len(x_val), len(y_val)) == (40, 40, 10, 10)
    # Rows stay paired with their labels and every example lands in exactly one set.
    np.testing.assert_array_equal(x_tr[:, 0], 2 * y_tr)
    np.testing.assert_array_equal(x_val[:, 0], 2 * y_val)
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_val])), y)
    assert not np.array_equal(y_tr, np.arange(40))  # shuffled


def test_train_val_split_determinism():
    x, y = np.arange(30.0).reshape(30, 1), np.arange(30)
    a = train_val_split(3, x, y)
    b = train_val_split(fnr.key(3), x, y)
    c = train_val_split(4, x, y)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3])


@pytest.mark.parametrize(
    "n_y, fraction, error, match",
    [
        (10, 0.0, ValueError, r"in \(0, 1\)"),
        (10, 1.0, ValueError, r"in \(0, 1\)"),
        (10, float("nan"), ValueError, r"in \(0, 1\)"),
        (10, True, TypeError, "number"),
        (9, 0.5, ValueError, "same length"),
        (10, 0.01, ValueError, "empty validation"),
        (10, 0.99, ValueError, "empty training"),
    ],
)
def test_train_val_split_bad_arguments(n_y, fraction, error, match):
    with pytest.raises(error, match=match):
        train_val_split(0, np.zeros((10, 2)), np.zeros(n_y), val_fraction=fraction)


def _moved(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The textbook shift, pixel by pixel: ``out[r, c] = image[r - dy, c - dx]`` or 0."""
    h, w = image.shape
    out = np.zeros_like(image)
    for r in range(h):
        for c in range(w):
            if 0 <= r - dy < h and 0 <= c - dx < w:
                out[r, c] = image[r - dy, c - dx]
    return out


@pytest.mark.parametrize("max_shift", [1, 2])
def test_random_shift_moves_each_image_by_one_offset_in_range(max_shift):
    n, h, w = 300, 7, 6
    # every pixel a distinct positive value, so where a pixel went gives the offset
    images = (np.arange(n * h * w, dtype=np.float32).reshape(n, h, w) + 1)
    out = random_shift(5, images, max_shift)
    assert out.shape == images.shape and out.dtype == images.dtype
    centre = images[:, h // 2, w // 2]  # survives any shift smaller than half the image
    seen = set()
    for i in range(n):
        (r,), (c,) = np.nonzero(out[i] == centre[i])
        dy, dx = r - h // 2, c - w // 2
        assert max(abs(dy), abs(dx)) <= max_shift, (i, dy, dx)
        np.testing.assert_array_equal(out[i], _moved(images[i], dy, dx), err_msg=f"image {i}")
        seen.add((dy, dx))
    assert len(seen) == (2 * max_shift + 1) ** 2  # every offset is drawn


def test_random_shift_offsets_are_uniform():
    n = 9000
    images = np.zeros((n, 5, 5), dtype=np.uint8)
    images[:, 2, 2] = 1
    out = random_shift(11, images, 1)
    counts = out.sum(axis=0)[1:4, 1:4]  # how often the lit pixel landed at each offset
    assert counts.sum() == n
    np.testing.assert_allclose(counts, n / 9, rtol=0.1)  # binomial sd is 3% of n / 9


def test_random_shift_flat_rows_key_and_identity():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 256, size=(40, 28, 28)).astype(np.uint8)
    flat = grid.reshape(40, 784)
    out = random_shift(3, flat, 2, image_shape=(28, 28))
    assert out.shape == (40, 784) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(40, 28, 28), random_shift(3, grid, 2))
    np.testing.assert_array_equal(out, random_shift(fnr.key(3), flat, 2, image_shape=(28, 28)))
    assert not np.array_equal(out, random_shift(4, flat, 2, image_shape=(28, 28)))
    np.testing.assert_array_equal(random_shift(3, grid, 0), grid)
    assert random_shift(3, grid, 1) is not grid  # a new array; the input is left alone
    np.testing.assert_array_equal(grid.reshape(40, 784), flat)


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (np.zeros((2, 4, 4)), {"max_shift": True}, TypeError, "max_shift must be an int"),
        (np.zeros((2, 4, 4)), {"max_shift": 1.0}, TypeError, "max_shift must be an int"),
        (np.zeros((2, 4, 4)), {"max_shift": -1}, ValueError, r"in \[0, 4\)"),
        (np.zeros((2, 4, 4)), {"max_shift": 4}, ValueError, r"in \[0, 4\)"),
        (np.zeros((2, 16)), {}, ValueError, r"\(n, h, w\), or \(n, h \* w\)"),
        (np.zeros((2, 15)), {"image_shape": (4, 4)}, ValueError, r"shape \(n, 16\)"),
    ],
)
def test_random_shift_bad_arguments(images, kwargs, error, match):
    with pytest.raises(error, match=match):
        random_shift(0, images, **kwargs)


# ---------------------------------------------------------------- synthetic sets

SETS = [spirals, xor, regression]


@pytest.mark.parametrize("make", SETS)
def test_synthetic_deterministic_per_key(make):
    a, b = make(fnr.key(7)), make(7)
    c = make(8)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("make", SETS)
def test_synthetic_accepts_jax_keys(make):
    jax = pytest.importorskip("jax")
    k = jax.numpy.asarray(fnr.key(1))
    x, y = make(k)
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    np.testing.assert_array_equal(x, make(1)[0])


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_spirals(classes):
    x, y = spirals(0, n=101, noise=0.0, classes=classes)
    assert x.dtype == np.float32 and x.shape == (101, 2)
    assert y.dtype == np.int64 and y.shape == (101,)
    counts = np.bincount(y, minlength=classes)
    assert len(counts) == classes and counts.max() - counts.min() <= 1
    assert np.all(np.linalg.norm(x, axis=1) < 1.0 + 1e-6)


def test_xor_labels_follow_quadrants():
    x, y = xor(0, n=300, noise=0.05)
    assert x.dtype == np.float32 and x.shape == (300, 2)
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    np.testing.assert_array_equal(y, (x[:, 0] * x[:, 1] < 0).astype(np.int64))


@pytest.mark.parametrize("features", [1, 3])
def test_regression(features):
    x, y = regression(0, n=50, features=features, noise=0.0)
    assert x.dtype == y.dtype == np.float32
    assert x.shape == (50, features) and y.shape == (50, 1)
    assert np.all((-1 <= x) & (x < 1))
    np.testing.assert_allclose(y[:, 0], np.sin(np.pi * x).mean(axis=1), atol=1e-6)
    _, y_noisy = regression(0, n=50, features=features, noise=0.5)
    assert not np.allclose(y_noisy, y)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: spirals(0, n=1, classes=2), ValueError),
        (lambda: spirals(0, classes=1), ValueError),
        (lambda: spirals(0, n=10.0), TypeError),
        (lambda: spirals(0, noise=-0.1), ValueError),
        (lambda: xor(0, n=0), ValueError),
        (lambda: xor(0, noise=float("inf")), ValueError),
        (lambda: xor(0, noise="0.1"), TypeError),
        (lambda: regression(0, features=0), ValueError),
        (lambda: regression(0, n=True), TypeError),
        (lambda: regression("seed"), TypeError),
    ],
)
def test_synthetic_bad_arguments(call, error):
    with pytest.raises(error):
        call()
