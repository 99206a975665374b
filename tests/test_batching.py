"""Tests for funcnn.batches: coverage of every row, sizes, determinism and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import funcnn
import funcnn.random as fnr
from funcnn.batching import epoch_order, num_batches, split_batches

BACKENDS = ("numpy", "jax")
# jax compiles a permutation for every distinct n (about a second each): jax tests share one n,
# the size of the data in test_train.py.
N = 100


def _np_batches(*args, **kwargs) -> list[np.ndarray]:
    """``funcnn.batches`` as a list of NumPy index arrays (jax keys give jax arrays)."""
    return [np.asarray(b) for b in funcnn.batches(*args, **kwargs)]


def _order(*args, **kwargs) -> np.ndarray:
    """All indices of one epoch in the order they are served."""
    return np.concatenate(_np_batches(*args, **kwargs))


# ---------------------------------------------------------------------------- coverage and sizes


@pytest.mark.parametrize(
    "backend, n, batch_size",
    [("numpy", 10, 3), ("numpy", 12, 4), ("numpy", 7, 1), ("numpy", 5, 5), ("jax", N, 32)],
)
def test_every_row_exactly_once_per_epoch(backend, n, batch_size):
    key = fnr.key(3, backend)
    for epoch in range(3):
        got = _order(key, n, batch_size, epoch=epoch)
        assert got.shape == (n,)
        assert np.array_equal(np.sort(got), np.arange(n)), f"epoch {epoch}: {got}"
        assert np.issubdtype(got.dtype, np.integer)


def test_sizes_with_a_short_last_batch():
    sizes = [b.shape[0] for b in _np_batches(0, 10, 3)]
    assert sizes == [3, 3, 3, 1]
    assert num_batches(10, 3) == 4


def test_drop_last_drops_only_the_short_batch():
    kept = _np_batches(0, 10, 3, drop_last=True)
    assert [b.shape[0] for b in kept] == [3, 3, 3]
    everything = _order(0, 10, 3)
    # the same order, minus the tail
    assert np.array_equal(np.concatenate(kept), everything[:9])
    assert num_batches(10, 3, drop_last=True) == 3


def test_drop_last_keeps_an_exact_division():
    kept = _np_batches(0, 12, 4, drop_last=True)
    assert [b.shape[0] for b in kept] == [4, 4, 4]
    assert np.array_equal(np.sort(np.concatenate(kept)), np.arange(12))


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_size_none_is_one_full_batch(drop_last):
    got = _np_batches(1, 9, None, drop_last=drop_last)
    assert len(got) == 1
    assert np.array_equal(np.sort(got[0]), np.arange(9))
    assert num_batches(9, None) == 1


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_size_larger_than_n_is_one_full_batch(drop_last):
    got = _np_batches(1, 5, 64, drop_last=drop_last)
    assert len(got) == 1
    assert np.array_equal(np.sort(got[0]), np.arange(5))
    assert num_batches(5, 64, drop_last) == 1


# ---------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_key_same_order(backend):
    a = _order(fnr.key(7, backend), N, 8, epoch=2)
    b = _order(fnr.key(7, backend), N, 8, epoch=2)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_keys_give_different_orders(backend):
    a = _order(fnr.key(7, backend), N, 8)
    b = _order(fnr.key(8, backend), N, 8)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_epochs_give_different_orders(backend):
    key = fnr.key(7, backend)
    orders = [_order(key, N, 8, epoch=e) for e in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(orders[i], orders[j]), (i, j)


def test_shuffled_order_is_not_the_identity():
    assert not np.array_equal(_order(0, 50, 8), np.arange(50))


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_shuffle_false_gives_arange_order(epoch):
    got = _np_batches(123, 10, 4, shuffle=False, epoch=epoch)
    assert [b.tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_shuffle_false_ignores_the_key():
    assert np.array_equal(_order(None, 10, 4, shuffle=False), np.arange(10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffle_every_2_keeps_the_order_between_draws(backend):
    key = fnr.key(11, backend)
    orders = [_order(key, N, 6, epoch=e, shuffle_every=2) for e in range(5)]
    assert np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    assert np.array_equal(orders[2], orders[3])
    assert not np.array_equal(orders[3], orders[4])
    # epoch 0 of shuffle_every=2 is epoch 0 of shuffle_every=1; epoch 2 is epoch 2's draw
    assert np.array_equal(orders[0], _order(key, N, 6, epoch=0))
    assert np.array_equal(orders[2], _order(key, N, 6, epoch=2))


def test_int_seed_and_key_are_accepted_and_agree():
    from_seed = _order(5, 30, 7, epoch=1)
    from_key = _order(fnr.key(5), 30, 7, epoch=1)
    assert np.array_equal(from_seed, from_key)
    assert np.array_equal(np.sort(from_seed), np.arange(30))


def test_a_split_key_is_accepted():
    k1, k2 = fnr.split(fnr.key(0))
    assert np.array_equal(np.sort(_order(k1, 20, 3)), np.arange(20))
    assert not np.array_equal(_order(k1, 20, 3), _order(k2, 20, 3))


def test_epoch_order_matches_batches():
    key = fnr.key(9)
    order = np.asarray(epoch_order(key, 23, epoch=3, shuffle_every=2))
    assert np.array_equal(order, _order(key, 23, 5, epoch=3, shuffle_every=2))


# ---------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be positive"),
        ({"batch_size": -4}, ValueError, "batch_size must be positive"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be a positive integer"),
        ({"batch_size": True}, TypeError, "batch_size must be a positive integer"),
        ({"n": 0}, ValueError, "n must be positive"),
        ({"n": -1}, ValueError, "n must be positive"),
        ({"n": 10.0}, TypeError, "n must be a positive integer"),
        ({"shuffle_every": 0}, ValueError, "shuffle_every must be positive"),
        ({"shuffle_every": 0, "shuffle": False}, ValueError, "shuffle_every must be positive"),
        ({"shuffle_every": 1.5}, TypeError, "shuffle_every must be a positive integer"),
    ],
)
def test_invalid_arguments_raise_when_called(kwargs, error, match):
    args = {"key": 0, "n": 10, "batch_size": 3, **kwargs}
    key, n, batch_size = args.pop("key"), args.pop("n"), args.pop("batch_size")
    # raised by the call itself, before the first batch is asked for
    with pytest.raises(error, match=match):
        funcnn.batches(key, n, batch_size, **args)


@pytest.mark.parametrize("n, batch_size, error, match", [
    (10, 0, ValueError, "batch_size must be positive"),
    (10, 2.0, TypeError, "batch_size must be a positive integer"),
    (0, 3, ValueError, "n must be positive"),
    (10.0, 3, TypeError, "n must be a positive integer"),
])
def test_split_batches_checks_its_arguments_like_batches(n, batch_size, error, match):
    with pytest.raises(error, match=match):
        split_batches(n, batch_size)


def test_a_bad_key_raises_a_clear_error():
    with pytest.raises(TypeError, match="expected an int seed or a key"):
        funcnn.batches(np.zeros(3, dtype=np.uint32), 10, 3)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.one_of(st.none(), st.integers(1, 80)),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 5),
)
def test_batches_property(n, batch_size, drop_last, seed, epoch):
    got = _np_batches(seed, n, batch_size, drop_last=drop_last, epoch=epoch)
    size = n if batch_size is None else min(batch_size, n)
    n_full, tail = divmod(n, size)
    want_sizes = [size] * n_full + ([tail] if tail and not drop_last else [])
    assert [b.shape[0] for b in got] == want_sizes
    assert len(got) == num_batches(n, batch_size, drop_last)
    # the one rule fit uses too: full batches of one size, then the tail (if kept)
    split = split_batches(n, batch_size, drop_last)
    assert [split.size] * split.full + [split.tail] * (split.tail > 0) == want_sizes
    assert (split.count, split.rows) == (len(got), sum(want_sizes))
    flat = np.concatenate(got)
    # no row twice; without drop_last every row; with it, exactly n - tail rows
    assert np.unique(flat).size == flat.size
    assert flat.size == (n_full * size if drop_last else n)
    assert flat.min() >= 0 and flat.max() < n
    # batches are consecutive slices of the epoch's order
    full = _order(seed, n, batch_size, epoch=epoch)
    assert np.array_equal(flat, full[: flat.size])
    assert math.ceil(n / size) == len(_np_batches(seed, n, batch_size, epoch=epoch))
