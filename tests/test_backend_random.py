"""Backends (resolution, conversion, mixing), explicit random keys, and pytree order."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import funcnn
import funcnn.random as fnr
from funcnn.backend import BACKENDS, backend_of
from funcnn.mlp import Dense
from funcnn.tree import tree_leaves, tree_map, tree_paths, tree_structure, tree_unflatten

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FUNCNN_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_import_funcnn_does_not_import_jax():
    result = run_python("""
        import sys
        import funcnn
        assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))
        # the NumPy path end to end: still no jax
        net = funcnn.MLP((3, 4, 2), dropout=0.5)
        params = funcnn.init_params(net, 0)
        x = funcnn.random.normal(funcnn.random.key(1), (5, 3))
        y = funcnn.random.permutation(funcnn.random.key(2), 5) % 2
        loss, grads = funcnn.value_and_grad(net, params, x, y, key=3, train=True)
        opt = funcnn.optim.adam(lr=funcnn.schedules.cosine_decay(1e-2, 10))
        params, state = opt.update(params, grads, opt.init(params))
        assert funcnn.get_backend() == 'numpy'
        assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))
        print('ok')
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------- backends


def test_backend_resolution_order(monkeypatch):
    monkeypatch.delenv("FUNCNN_BACKEND", raising=False)
    assert funcnn.get_backend() == "numpy"
    monkeypatch.setenv("FUNCNN_BACKEND", "jax")
    assert funcnn.get_backend() == "jax"
    assert isinstance(funcnn.init_params(funcnn.MLP((3, 2)), 0)[0].W, jax.Array)
    funcnn.backend.set_backend("numpy")  # set_backend beats the environment
    assert funcnn.get_backend() == "numpy"
    assert funcnn.get_backend("jax") == "jax"  # an explicit name beats both
    assert isinstance(funcnn.init_params(funcnn.MLP((3, 2)), 0)[0].W, np.ndarray)
    assert isinstance(fnr.key(0), np.ndarray)
    funcnn.backend.set_backend(None)  # back to the environment
    assert funcnn.get_backend() == "jax"
    assert isinstance(fnr.key(0), jax.Array)


def test_set_backend_changes_the_default_for_creation(monkeypatch):
    monkeypatch.delenv("FUNCNN_BACKEND", raising=False)
    funcnn.backend.set_backend("jax")
    params = funcnn.init_params(funcnn.MLP((3, 2)), 0)
    assert all(isinstance(leaf, jax.Array) for leaf in tree_leaves(params))
    funcnn.backend.set_backend(None)
    assert funcnn.get_backend() == "numpy"


@pytest.mark.parametrize("name", ["torch", "NumPy", "", 3])
def test_unknown_backend_lists_the_known_ones(name, monkeypatch):
    for call in (lambda: funcnn.backend.set_backend(name), lambda: funcnn.get_backend(name),
                 lambda: funcnn.to_backend(np.ones(2), name)):
        with pytest.raises(ValueError, match="unknown backend") as info:
            call()
        assert all(b in str(info.value) for b in BACKENDS)
    monkeypatch.setenv("FUNCNN_BACKEND", "torch")
    with pytest.raises(ValueError, match="FUNCNN_BACKEND='torch'.*numpy, jax"):
        funcnn.get_backend()


def test_to_backend_round_trip_keeps_containers_and_dtypes():
    Pair = namedtuple("Pair", ["left", "right"])
    tree = {
        "params": (Dense(np.ones((2, 3), np.float32), np.zeros(3, np.float32)),),
        "count": np.array(3, np.int32),
        "key": fnr.key(5),
        "flags": [np.array([True, False])],
        "pair": Pair(np.arange(4, dtype=np.float64), None),
    }
    on_jax = funcnn.to_backend(tree, "jax")
    back = funcnn.to_backend(on_jax, "numpy")
    for converted, array_type in ((on_jax, jax.Array), (back, np.ndarray)):
        assert tree_structure(converted) == tree_structure(tree)
        assert type(converted["params"][0]) is Dense and type(converted["pair"]) is Pair
        assert type(converted["flags"]) is list and converted["pair"].right is None
        assert all(isinstance(leaf, array_type) for leaf in tree_leaves(converted))
        for leaf, original in zip(tree_leaves(converted), tree_leaves(tree), strict=True):
            assert np.dtype(leaf.dtype) == original.dtype
            np.testing.assert_array_equal(np.asarray(leaf), original)
        chex.assert_trees_all_equal_structs(converted, tree)  # jax's view of the same tree
        chex.assert_trees_all_equal_shapes_and_dtypes(converted, tree)
    as64 = funcnn.to_backend(tree["params"], "jax", dtype="float64")
    assert {np.dtype(leaf.dtype) for leaf in tree_leaves(as64)} == {np.dtype(np.float64)}


def test_mixed_backends_raise_type_error():
    np_tree = (np.ones(2), np.ones(3))
    jax_tree = funcnn.to_backend(np_tree, "jax")
    assert backend_of(np_tree) == "numpy" and backend_of(jax_tree) == "jax"
    assert backend_of(jax_tree, np.ones(2)) == "jax"  # NumPy data may join jax params
    assert backend_of({}, jnp.ones(2)) == "jax"
    with pytest.raises(TypeError, match="mixed backends"):
        backend_of((np.ones(2), jnp.ones(2)))
    with pytest.raises(TypeError, match="mixed backends"):
        backend_of(np_tree, jnp.ones(2))


# ---------------------------------------------------------------------- random keys

SHAPE = (1000, 4)  # one sample shape throughout: jax compiles each sampler once per shape


def test_same_seed_same_key_and_numbers(backend):
    a, b = fnr.key(42, backend), fnr.key(42, backend)
    assert a.shape == (2,) and np.dtype(a.dtype) == np.uint32
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.asarray(fnr.key(43, backend)).tobytes() != np.asarray(a).tobytes()
    for sample in (lambda k: fnr.normal(k, SHAPE), lambda k: fnr.uniform(k, SHAPE),
                   lambda k: fnr.bernoulli(k, 0.5, SHAPE), lambda k: fnr.permutation(k, 50)):
        assert np.asarray(sample(a)).tobytes() == np.asarray(sample(b)).tobytes()
        assert np.asarray(sample(a)).tobytes() != np.asarray(sample(fnr.key(43, backend))).tobytes()


def test_one_seed_draws_the_same_numbers_on_both_backends():
    """The whole contract is in tests/test_random_stream.py; this is its smoke test."""
    on_np, on_jax = fnr.key(42, "numpy"), fnr.key(42, "jax")
    np.testing.assert_array_equal(fnr.split(on_np, 3), np.asarray(fnr.split(on_jax, 3)))
    np.testing.assert_allclose(fnr.normal(on_np, SHAPE), np.asarray(fnr.normal(on_jax, SHAPE)),
                               rtol=1e-6, atol=0)
    np.testing.assert_array_equal(fnr.bernoulli(on_np, 0.5, SHAPE),
                                  np.asarray(fnr.bernoulli(on_jax, 0.5, SHAPE)))
    np.testing.assert_array_equal(fnr.permutation(on_np, 50),
                                  np.asarray(fnr.permutation(on_jax, 50)))


def test_large_seeds_are_distinct(backend):
    keys = [np.asarray(fnr.key(s, backend)).tobytes() for s in (0, 1, 2**32, 2**32 + 1, 2**64 - 1)]
    assert len(set(keys)) == len(keys)


def test_split_and_fold_in_give_distinct_keys(backend):
    key = fnr.key(0, backend)
    keys = fnr.split(key, 5)
    assert keys.shape == (5, 2) and np.dtype(keys.dtype) == np.uint32
    rows = {np.asarray(k).tobytes() for k in keys} | {np.asarray(key).tobytes()}
    assert len(rows) == 6
    assert np.asarray(fnr.split(key)).tobytes() == np.asarray(fnr.split(key)).tobytes()
    assert fnr.split(key).shape == (2, 2)
    folded = {np.asarray(fnr.fold_in(key, i)).tobytes() for i in range(5)}
    assert len(folded) == 5
    # samples from split keys are different streams
    a, b = (np.asarray(fnr.normal(k, SHAPE)).ravel() for k in fnr.split(key))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1


def test_numpy_keys_are_read_only():
    key = fnr.key(0, "numpy")
    for k in (key, fnr.split(key), fnr.fold_in(key, 3), fnr.as_key(np.array([1, 2], np.uint32))):
        assert not k.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            k[0] = 1


def test_numpy_sampling_leaves_global_state_alone():
    before = np.random.get_state()  # noqa: NPY002 (the legacy global state is the point)
    key = fnr.key(7, "numpy")
    fnr.normal(key, (10,))
    fnr.uniform(key, (10,))
    fnr.bernoulli(key, 0.3, (10,))
    fnr.permutation(key, 10)
    fnr.split(key, 3)
    fnr.fold_in(key, 2)
    funcnn.init_params(funcnn.MLP((3, 4, 2), dropout=0.5), key)
    after = np.random.get_state()  # noqa: NPY002
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sampler_dtypes_and_shapes(backend, dtype):
    key = fnr.key(1, backend)
    array_type = jax.Array if backend == "jax" else np.ndarray
    n = fnr.normal(key, SHAPE, dtype)
    u = fnr.uniform(key, SHAPE, dtype, minval=-2.0, maxval=5.0)
    for a in (n, u):
        assert isinstance(a, array_type) and a.shape == SHAPE
        assert np.dtype(a.dtype) == np.dtype(dtype)
    u = np.asarray(u)
    assert u.min() >= -2.0 and u.max() < 5.0 and u.max() - u.min() > 6.0
    assert abs(float(np.asarray(n).mean())) < 0.1 and 0.95 < float(np.asarray(n).std()) < 1.05
    assert np.dtype(fnr.normal(key, SHAPE).dtype) == np.float32  # float32 by default
    b = fnr.bernoulli(key, 0.25, SHAPE)
    assert isinstance(b, array_type) and b.shape == SHAPE and np.dtype(b.dtype) == np.bool_
    assert abs(float(np.asarray(b).mean()) - 0.25) < 0.03
    p = np.asarray(fnr.permutation(key, 50))
    assert p.shape == (50,) and p.dtype == np.int32  # int32 on both, whatever jax_enable_x64
    np.testing.assert_array_equal(np.sort(p), np.arange(50))


def test_as_key_accepts_seeds_and_keys_and_refuses_the_rest():
    np.testing.assert_array_equal(fnr.as_key(3), fnr.key(3))
    jax_key = fnr.as_key(fnr.key(3, "numpy"), "jax")
    assert isinstance(jax_key, jax.Array)
    np.testing.assert_array_equal(np.asarray(jax_key), fnr.key(3))
    typed = jax.random.key(0)  # a new-style typed jax key is accepted too
    assert fnr.as_key(typed).shape == (2,)
    for bad in (np.zeros(3, np.uint32), np.zeros(2, np.int64), "seed", 1.5):
        with pytest.raises(TypeError, match="key"):
            fnr.as_key(bad)
    with pytest.raises(TypeError, match="integer"):
        fnr.key(True)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            fnr.key(seed)


# ---------------------------------------------------------------------- pytree order

Point = namedtuple("Point", ["y", "x"])  # fields deliberately not in sorted order


def _leaf_ids(tree, leaves_fn):
    return [id(leaf) for leaf in leaves_fn(tree)]


def test_tree_leaves_follow_jax_order():
    leaf = [np.array(float(i)) for i in range(12)]
    trees = [
        (leaf[0], (leaf[1], leaf[2]), [leaf[3]]),
        {"b": leaf[0], "a": leaf[1], "c": {"z": leaf[2], "y": leaf[3]}},
        Point(leaf[0], leaf[1]),
        (Dense(leaf[0], leaf[1]), None, Dense(leaf[2], leaf[3])),
        {"w": [None, Point(x=leaf[4], y=(leaf[5], None))], "a": (), "m": leaf[6]},
        [],
        None,
        leaf[7],
    ]
    for tree in trees:
        assert _leaf_ids(tree, tree_leaves) == _leaf_ids(tree, jax.tree_util.tree_leaves)
        rebuilt = tree_unflatten(tree, tree_leaves(tree))
        assert jax.tree_util.tree_structure(rebuilt) == jax.tree_util.tree_structure(tree)
    assert [p for p, _ in tree_paths(trees[3])] == ["[0].W", "[0].b", "[2].W", "[2].b"]
    assert [p for p, _ in tree_paths(trees[1])] == ["['a']", "['b']", "['c']['y']",
                                                    "['c']['z']"]


_leaves = st.integers(0, 1000).map(np.int64)
_trees = st.recursive(
    st.one_of(_leaves, st.none()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.tuples(children, children).map(lambda t: Point(*t)),
        st.tuples(children, children).map(lambda t: Dense(*t)),
        st.dictionaries(st.text("abcxyz", min_size=1, max_size=3), children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(tree=_trees)
def test_tree_functions_agree_with_jax_on_random_trees(tree):
    assert _leaf_ids(tree, tree_leaves) == _leaf_ids(tree, jax.tree_util.tree_leaves)
    doubled = tree_map(lambda x: x * 2, tree)
    assert jax.tree_util.tree_structure(doubled) == jax.tree_util.tree_structure(tree)
    assert [int(x) for x in tree_leaves(doubled)] == [
        2 * int(x) for x in jax.tree_util.tree_leaves(tree)]
    assert tree_structure(doubled) == tree_structure(tree)


def test_tree_map_explains_a_structure_mismatch():
    a = (Dense(np.ones(2), np.ones(1)),)
    b = (Dense(np.ones(2), np.ones(1)), Dense(np.ones(2), np.ones(1)))
    with pytest.raises(ValueError, match=r"(?s)tree structures differ.*first:.*other:"):
        tree_map(lambda u, v: u + v, a, b)
    with pytest.raises(ValueError, match="first difference"):
        tree_map(lambda u, v: u + v, {"a": np.ones(1)}, {"b": np.ones(1)})
