"""One random stream on both backends: a NumPy key draws what jax draws from the same key.

The reference is ``jax.random`` itself, called on raw ``jax.random.PRNGKey`` data (not
through funcnn). Exact means the same bits: floats are compared through their integer
bit patterns. ``normal`` goes through XLA's ``log`` and erf_inv, which round differently
from NumPy's; it is held to ``NORMAL_ULPS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import funcnn
import funcnn._threefry as threefry
import funcnn.random as fnr
from funcnn.initializers import INITIALIZERS
from funcnn.network import draw_noise

ROOT = Path(__file__).resolve().parents[1]

# Seeds at the edges of both key words, then random ones.
EDGE_SEEDS = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63,
              2**64 - 2, 2**64 - 1]
SEEDS = EDGE_SEEDS + [int(s) for s in np.random.default_rng(8).integers(0, 2**64, 37,
                                                                         dtype=np.uint64)]
# Empty, one element, odd and even sizes, and up to 3-d; (9,) and (17,) cross the point
# where the cipher switches from Python ints to arrays (8 pairs).
SHAPES = [(), (0,), (1,), (2,), (3,), (8,), (9,), (17,), (1, 1), (5, 3), (4, 0, 3), (2, 3, 5)]
FLOATS = (np.float32, np.float64)
NORMAL_ULPS = {np.float32: 4, np.float64: 8}  # observed maxima over 2e7 draws: 3 and 5


def raw_key(seed: int) -> jax.Array:
    """The reference key: ``jax.random.PRNGKey(seed)`` (int64 seeds), else its words."""
    if seed < 2**63:
        return jax.random.PRNGKey(seed)
    return jnp.array([seed >> 32, seed & 0xFFFFFFFF], dtype=jnp.uint32)


def bits_of(a) -> np.ndarray:
    """The IEEE bit patterns of a float array, to compare bit for bit."""
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def ulp_distance(a, b) -> np.ndarray:
    """How many representable floats lie between ``a`` and ``b`` (elementwise)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    signed = np.int32 if a.dtype == np.float32 else np.int64
    ordered = []
    for x in (a, b):
        i = x.view(signed).astype(np.int64)
        ordered.append(np.where(i < 0, np.iinfo(signed).min - i, i))  # monotone in x
    return np.abs(ordered[0] - ordered[1])


def assert_identical_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    differ = np.flatnonzero(bits_of(got).ravel() != bits_of(want).ravel())
    assert differ.size == 0, f"{what}: {differ.size} of {got.size} differ, first at {differ[0]}"


# ---------------------------------------------------------------------- keys


@pytest.mark.parametrize("seed", SEEDS)
def test_keys_split_and_fold_in_are_identical_bit_for_bit(seed):
    k_np, k_jax, ref = fnr.key(seed, "numpy"), fnr.key(seed, "jax"), raw_key(seed)
    np.testing.assert_array_equal(k_np, np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(k_jax), np.asarray(ref))
    for n in (0, 1, 2, 3, 8, 9, 33):
        want = np.asarray(jax.random.split(ref, n))
        np.testing.assert_array_equal(fnr.split(k_np, n), want, err_msg=f"split n={n}")
        np.testing.assert_array_equal(np.asarray(fnr.split(k_jax, n)), want)
    for data in (0, 1, 7, 2**31, 2**32 - 1, np.int64(12), np.array(5, np.uint32)):
        want = np.asarray(jax.random.fold_in(ref, int(data)))
        np.testing.assert_array_equal(fnr.fold_in(k_np, data), want, err_msg=f"fold_in {data}")
        np.testing.assert_array_equal(np.asarray(fnr.fold_in(k_jax, data)), want)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**64 - 1),
       path=st.lists(st.tuples(st.sampled_from(["split", "fold"]), st.integers(0, 2**32 - 1)),
                     max_size=5))
def test_chains_of_derived_keys_agree(seed, path):
    """Keys derived by any sequence of splits and folds are the same on both backends."""
    k_np, ref = fnr.key(seed, "numpy"), raw_key(seed)
    for op, arg in path:
        if op == "split":
            n = arg % 5 + 1
            k_np, ref = fnr.split(k_np, n)[arg % n], jax.random.split(ref, n)[arg % n]
        else:
            k_np, ref = fnr.fold_in(k_np, arg), jax.random.fold_in(ref, arg)
    np.testing.assert_array_equal(k_np, np.asarray(ref))


def test_traced_fold_in_data_under_jit_matches_numpy():
    k = fnr.key(11, "jax")
    folded = jax.jit(lambda key, step: fnr.fold_in(key, step))(k, jnp.uint32(9))
    np.testing.assert_array_equal(np.asarray(folded), fnr.fold_in(fnr.key(11, "numpy"), 9))


# ---------------------------------------------------------------------- bits and uniforms


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_bits_are_identical(seed):
    k_np, ref = fnr.key(seed, "numpy"), raw_key(seed)
    for shape in SHAPES:
        n = int(np.prod(shape))
        for width, dtype in ((32, jnp.uint32), (64, jnp.uint64)):
            want = np.asarray(jax.random.bits(ref, shape, dtype)).ravel()
            got = threefry.random_bits(k_np, width, n, True)
            np.testing.assert_array_equal(got, want, err_msg=f"{width} bits {shape}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_is_identical_bit_for_bit(seed):
    k_np, k_jax, ref = fnr.key(seed, "numpy"), fnr.key(seed, "jax"), raw_key(seed)
    limit = float(np.sqrt(6.0 / 13.0))  # a Glorot limit: a bound that is not a short binary
    for shape in SHAPES:
        for dtype in FLOATS:
            for lo, hi in ((0.0, 1.0), (-2.5, 7.25), (-limit, limit), (1e-3, 1e3)):
                want = jax.random.uniform(ref, shape, dtype, lo, hi)
                what = f"uniform {shape} {dtype.__name__} [{lo}, {hi})"
                assert_identical_bits(fnr.uniform(k_np, shape, dtype, lo, hi), want, what)
                assert_identical_bits(fnr.uniform(k_jax, shape, dtype, lo, hi), want, what)


@pytest.mark.slow
def test_uniform_on_a_large_draw_and_under_jit_is_identical():
    """Jitted with the key traced, and with the bounds either traced or constants. (With
    constant bounds exactly 1 apart, XLA folds ``(f - 1) * 1 + lo`` into ``f + (lo - 1)``,
    and jax's own jitted and eager draws can differ in the last bit; funcnn follows eager.)"""
    for seed in (0, 5, 2**64 - 1):
        k_np, k_jax = fnr.key(seed, "numpy"), fnr.key(seed, "jax")
        for dtype in FLOATS:
            want = fnr.uniform(k_np, (301, 257), dtype, -0.3, 0.9)
            constant = jax.jit(lambda k, d=dtype: fnr.uniform(k, (301, 257), d, -0.3, 0.9))
            traced = jax.jit(lambda k, lo, hi, d=dtype: fnr.uniform(k, (301, 257), d, lo, hi))
            what = f"jitted uniform {dtype.__name__} seed {seed}"
            assert_identical_bits(constant(k_jax), want, what)
            assert_identical_bits(traced(k_jax, -0.3, 0.9), want, what)


# ---------------------------------------------------------------------- normal


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_normal_is_within_a_few_ulp(seed):
    k_np, k_jax, ref = fnr.key(seed, "numpy"), fnr.key(seed, "jax"), raw_key(seed)
    for shape in [*SHAPES, (64, 65)]:
        for dtype in FLOATS:
            want = np.asarray(jax.random.normal(ref, shape, dtype))
            on_jax = np.asarray(fnr.normal(k_jax, shape, dtype))
            for got in (fnr.normal(k_np, shape, dtype), on_jax):
                assert got.shape == want.shape and got.dtype == want.dtype
                worst = int(ulp_distance(got, want).max(initial=0))
                assert worst <= NORMAL_ULPS[dtype], f"normal {shape} {dtype.__name__}: {worst} ulp"


@pytest.mark.slow
def test_normal_on_large_draws_and_under_jit_is_within_a_few_ulp():
    for seed in (0, 1, 2**32):
        k_np, k_jax = fnr.key(seed, "numpy"), fnr.key(seed, "jax")
        for dtype in FLOATS:
            want = jax.jit(lambda k, d=dtype: fnr.normal(k, (784, 512), d))(k_jax)
            worst = int(ulp_distance(fnr.normal(k_np, (784, 512), dtype), want).max())
            assert worst <= NORMAL_ULPS[dtype], f"{dtype.__name__} seed {seed}: {worst} ulp"


@pytest.mark.parametrize("dtype", FLOATS)
def test_erfinv_follows_xla_in_every_branch(dtype):
    """Both tails of every branch of XLA's erf_inv (w = -log1p(-x*x) up to 5 / 6.25 / 16
    and beyond), zero, +-1 (infinite) and NaN."""
    tiny = np.finfo(dtype).eps
    near_one = 1 - np.geomspace(tiny, 0.5, 4000)
    x = np.concatenate([near_one, -near_one, np.linspace(-0.5, 0.5, 4001),
                        [0.0, 1.0, -1.0, np.nan]]).astype(dtype)
    want = np.asarray(jax.jit(jax.lax.erf_inv)(x))
    got = threefry.erfinv(x)
    same_special = np.isnan(want) == np.isnan(got)
    assert same_special.all() and np.array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    worst = int(ulp_distance(got[finite], want[finite]).max())
    assert worst <= NORMAL_ULPS[dtype], f"erfinv {dtype.__name__}: {worst} ulp"


# ---------------------------------------------------------------------- bernoulli, permutation


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_bernoulli_is_identical(seed):
    k_np, k_jax, ref = fnr.key(seed, "numpy"), fnr.key(seed, "jax"), raw_key(seed)
    for shape in [*SHAPES, (33, 31)]:
        for p in (0.0, 0.1, 1 / 3, 0.5, 0.8, 1.0, np.float64(0.7), np.float32(0.25)):
            want = np.asarray(jax.random.bernoulli(ref, jnp.float32(p), shape))
            got = fnr.bernoulli(k_np, p, shape)
            assert got.dtype == np.bool_ and got.shape == shape
            np.testing.assert_array_equal(got, want, err_msg=f"bernoulli {shape} p={p}")
            np.testing.assert_array_equal(np.asarray(fnr.bernoulli(k_jax, p, shape)), want)


def test_bernoulli_compares_with_float32_p_whatever_x64():
    """p = 0.5 + 2**-25 rounds to 0.5 in float32: a draw of exactly 0.5 is False both ways."""
    p = 0.5 + 2.0**-25
    for seed in range(20):
        k_np, k_jax = fnr.key(seed, "numpy"), fnr.key(seed, "jax")
        u = fnr.uniform(k_np, (4096,), "float32")
        want = u < np.float32(p)
        np.testing.assert_array_equal(fnr.bernoulli(k_np, p, (4096,)), want)
        np.testing.assert_array_equal(np.asarray(fnr.bernoulli(k_jax, p, (4096,))), want)


@pytest.mark.slow
@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 100, 1625, 1626, 4097, 100_000])
def test_permutation_is_identical(n):
    """1625 -> 1626 is where jax goes from one sort round to two."""
    seeds = SEEDS if n <= 4097 else EDGE_SEEDS[:4]
    for seed in seeds:
        want = np.asarray(jax.random.permutation(raw_key(seed), n))
        got = fnr.permutation(fnr.key(seed, "numpy"), n)
        assert got.dtype == np.int32 and got.shape == (n,)
        np.testing.assert_array_equal(got, want, err_msg=f"permutation n={n} seed={seed}")
        on_jax = fnr.permutation(fnr.key(seed, "jax"), n)
        assert on_jax.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(on_jax), want)


# ---------------------------------------------------------------------- what funcnn draws


@pytest.mark.parametrize("dtype", FLOATS)
def test_init_params_agree_across_backends_for_every_initializer(dtype):
    net = funcnn.MLP((7, 16, 9, 3))
    for init in INITIALIZERS:
        on_np = funcnn.init_params(net, 0, backend="numpy", dtype=dtype, init=init)
        on_jax = funcnn.init_params(net, 0, backend="jax", dtype=dtype, init=init)
        for a, b in zip(funcnn.tree.tree_leaves(on_np), funcnn.tree.tree_leaves(on_jax),
                        strict=True):
            assert isinstance(b, jax.Array) and a.dtype == b.dtype == dtype
            # a normal draw times a constant: within NORMAL_ULPS + 1 ulp of each element
            tolerance = (NORMAL_ULPS[dtype] + 1) * np.finfo(dtype).eps
            np.testing.assert_allclose(a, np.asarray(b), rtol=tolerance, atol=0,
                                       err_msg=f"init={init}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", FLOATS)
def test_dropout_masks_are_identical(dtype):
    net = funcnn.MLP((5, 33, 17, 9, 2), dropout=0.3)
    for seed in (0, 1, 99, 2**64 - 1):
        on_np = draw_noise(net, fnr.key(seed), 64, dtype, "numpy")[:-1]
        on_jax = draw_noise(net, fnr.key(seed, "jax"), 64, dtype, "jax")[:-1]
        assert len(on_np) == len(on_jax) == 3
        for a, b in zip(on_np, on_jax, strict=True):
            assert_identical_bits(a, b, f"dropout mask seed {seed}")
            assert 0.5 < float(np.mean(a != 0)) < 0.9  # about 70% kept


@pytest.mark.slow
@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_fit_with_dropout_and_shuffling_gives_the_same_params_on_both_backends(
        dtype, rtol, partitionable, assert_trees_close):
    """Also the short last batch, which jax pads to a full one: fit draws every batch's
    dropout masks for a full batch on both backends, under both threefry layouts."""
    x, y = funcnn.data.spirals(3, n=150, noise=0.05)
    net = funcnn.MLP((2, 24, 24, 2), hidden="tanh", dropout=0.2)
    results = {}
    for backend in ("numpy", "jax"):
        with jax.threefry_partitionable(partitionable):
            params = funcnn.init_params(net, 4, backend=backend, dtype=dtype)
            xb, yb = funcnn.to_backend(x, backend), funcnn.to_backend(y, backend)
            params, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), xb, yb,
                                            epochs=3, batch_size=32, key=5, progress=False)
        results[backend] = (params, history["loss"])
    assert len(results["numpy"][1]) == 3 * 5  # 150 rows: four batches of 32 and one of 22
    assert_trees_close(results["numpy"][0], results["jax"][0], rtol=rtol)
    np.testing.assert_allclose(results["numpy"][1], results["jax"][1], rtol=100 * rtol)


# ---------------------------------------------------------------------- jax settings


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "FUNCNN_BACKEND"}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_float32_draws_are_identical_with_x64_off():
    result = run_python("""
        import jax, numpy as np
        import funcnn.random as fnr
        assert not jax.config.jax_enable_x64
        for seed in (0, 1, 2**32 - 1, 2**40 + 7):
            kn, kj = fnr.key(seed, "numpy"), fnr.key(seed, "jax")
            for shape in ((), (1,), (7,), (5, 3), (2, 3, 5)):
                u = np.asarray(fnr.uniform(kj, shape, "float32", -1.5, 2.0))
                assert np.array_equal(fnr.uniform(kn, shape, "float32", -1.5, 2.0).view(np.uint32),
                                      u.view(np.uint32))
                a, b = fnr.normal(kn, shape), np.asarray(fnr.normal(kj, shape))
                assert a.dtype == b.dtype == np.float32
                assert np.allclose(a, b, rtol=5e-7, atol=0)
                b1, b2 = fnr.bernoulli(kn, 0.3, shape), np.asarray(fnr.bernoulli(kj, 0.3, shape))
                assert np.array_equal(b1, b2)
            p1, p2 = fnr.permutation(kn, 3000), fnr.permutation(kj, 3000)
            assert p1.dtype == p2.dtype == np.int32 and np.array_equal(p1, np.asarray(p2))
            assert np.array_equal(fnr.split(kn, 3), np.asarray(fnr.split(kj, 3)))
            assert np.array_equal(fnr.fold_in(kn, 9), np.asarray(fnr.fold_in(kj, 9)))
        try:
            fnr.normal(fnr.key(0, "jax"), (2,), "float64")
        except ValueError as err:
            assert "jax_enable_x64" in str(err), err
        else:
            raise AssertionError("float64 without x64 was not refused")
        print("ok")
    """, JAX_ENABLE_X64="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_the_numpy_stream_follows_threefry_partitionable():
    """Flipping jax's flag flips both backends to jax's other counter layout."""
    shape, k_np, ref = (5, 3), fnr.key(7, "numpy"), raw_key(7)
    default = fnr.uniform(k_np, shape)
    with jax.threefry_partitionable(False):
        assert not fnr.threefry_partitionable()
        np.testing.assert_array_equal(fnr.split(k_np, 3), np.asarray(jax.random.split(ref, 3)))
        assert_identical_bits(fnr.uniform(k_np, shape), jax.random.uniform(ref, shape,
                                                                            jnp.float32), "u")
        assert_identical_bits(fnr.uniform(k_np, shape, "float64", -1.0, 3.0),
                              jax.random.uniform(ref, shape, jnp.float64, -1.0, 3.0), "u64")
        want = jax.random.normal(ref, (999,), jnp.float32)
        assert ulp_distance(fnr.normal(k_np, (999,)), want).max() <= NORMAL_ULPS[np.float32]
        np.testing.assert_array_equal(fnr.permutation(k_np, 2000),
                                      np.asarray(jax.random.permutation(ref, 2000)))
        np.testing.assert_array_equal(fnr.bernoulli(k_np, 0.4, shape),
                                      np.asarray(jax.random.bernoulli(ref, jnp.float32(0.4),
                                                                      shape)))
        assert not np.array_equal(fnr.uniform(k_np, shape), default)
    assert fnr.threefry_partitionable()
    assert_identical_bits(fnr.uniform(k_np, shape), default, "back to the default")


@pytest.mark.slow
def test_without_jax_the_environment_variable_decides():
    code = """
        import sys
        import funcnn.random as fnr
        assert "jax" not in sys.modules
        print(fnr.threefry_partitionable(), fnr.uniform(fnr.key(7), (5,)).view("uint32").tolist())
    """
    off = run_python(code, JAX_THREEFRY_PARTITIONABLE="false")
    assert off.returncode == 0, off.stderr
    flag, words = off.stdout.split(" ", 1)
    assert flag == "False"
    with jax.threefry_partitionable(False):
        want = np.asarray(jax.random.uniform(raw_key(7), (5,), jnp.float32)).view(np.uint32)
    assert words.strip() == str(want.tolist())
    bad = run_python(code, JAX_THREEFRY_PARTITIONABLE="maybe")
    assert bad.returncode != 0 and "JAX_THREEFRY_PARTITIONABLE='maybe'" in bad.stderr


def test_the_jax_path_ignores_another_default_prng():
    k_jax, ref = fnr.key(3, "jax"), raw_key(3)
    want = np.asarray(jax.random.normal(ref, (4,), jnp.float32))
    want_split = np.asarray(jax.random.split(ref, 2))
    with jax.default_prng_impl("rbg"):
        got = np.asarray(fnr.normal(k_jax, (4,)))
        got_split = np.asarray(fnr.split(k_jax, 2))
    assert_identical_bits(got, want, "normal under the rbg default")
    np.testing.assert_array_equal(got_split, want_split)


# ---------------------------------------------------------------------- bad arguments


def test_bad_arguments_are_refused_with_a_clear_message():
    k = fnr.key(0)
    for call, error, match in [
        (lambda: fnr.fold_in(k, -1), ValueError, r"fold_in data must be in \[0, 4294967296\)"),
        (lambda: fnr.fold_in(k, 2**32), ValueError, "fold_in data"),
        (lambda: fnr.fold_in(k, 1.5), TypeError, "fold_in data must be an integer"),
        (lambda: fnr.split(k, -1), ValueError, r"n must be in \[0"),
        (lambda: fnr.split(k, 2.0), TypeError, "n must be an integer"),
        (lambda: fnr.permutation(k, -3), ValueError, "n must be in"),
        (lambda: fnr.normal(k, (2, -1)), ValueError, "shape must be a tuple of non-negative"),
        (lambda: fnr.uniform(k, (2,), "float16"), ValueError, "dtype must be float32 or float64"),
        (lambda: fnr.normal(k, (2,), "int32"), ValueError, "dtype must be float32 or float64"),
    ]:
        with pytest.raises(error, match=match):
            call()
    with pytest.raises(TypeError, match="funcnn keys are threefry2x32 keys; got a jax rbg"):
        fnr.as_key(jax.random.key(0, impl="rbg"))
