"""Shared test configuration for funcnn.

* ``jax_enable_x64`` is on for the whole session: the gradient checks compare in
  float64. funcnn itself defaults to float32 (``init_params(dtype="float32")``), so
  tests of the float32 defaults create float32 data explicitly.
* ``jax_numpy_rank_promotion="raise"``: an implicit broadcast between arrays of
  different ranks (the classic hidden bug of a hand-written backward pass) is an
  error, not a silent reshape.
* ``jax_numpy_dtype_promotion="strict"``: mixing float32 and float64 (or ints and
  floats) without an explicit cast is an error, so no float64 sneaks into a float32
  computation on the jax side.
* No global random seed anywhere: randomness comes from explicit
  ``np.random.default_rng(seed)`` generators and funcnn keys.
* The quick tier (``-m "not slow"``): the rules are in ``tests/_tiers.py``; the hook below
  marks the tests outside each covering sample ``slow`` and, on a run over the whole suite,
  stops the run if the quick tier lost a module or fell under its floor.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from _tiers import quick_cases, sampled_tests, tier_gaps  # tests/ is on the path

# The repository root, so that ``import funcnn`` works without installing the package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import funcnn  # noqa: E402  (after the jax configuration and the path set-up)
from funcnn.tree import tree_leaves, tree_paths  # noqa: E402

BACKENDS = ("numpy", "jax")


def _function(item) -> str:
    """``file::function`` of a test item, the keys of ``QUICK_COVER``."""
    return f"{item.path.name}::{item.originalname}"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config, items):
    """Marks ``slow`` what the samples of ``_tiers`` leave out, then checks the quick tier."""
    sampled: dict[str, list] = {}
    for item in items:
        if _function(item) in sampled_tests() and not item.get_closest_marker("slow"):
            sampled.setdefault(_function(item), []).append(item)
    for name, cases in sampled.items():
        keep = quick_cases(name, [(it.callspec.params, it.callspec.indices) for it in cases])
        for i, item in enumerate(cases):
            if i not in keep:
                item.add_marker(pytest.mark.slow)
    modules = {path.name for path in Path(__file__).resolve().parent.glob("test_*.py")}
    if {item.path.name for item in items} != modules:
        return  # a part of the suite: the tier is checked on runs over all of it
    stale = sampled_tests() - {_function(item) for item in items}
    problems = [f"tests/_tiers.py names {name}, which is no test" for name in sorted(stale)]
    problems += tier_gaps(Counter(item.path.name for item in items),
                          Counter(item.path.name for item in items
                                  if item.get_closest_marker("slow") is None))
    if problems:
        raise pytest.UsageError("the quick tier:\n  " + "\n  ".join(problems))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every test that takes ``backend`` runs once on NumPy and once on jax."""
    return request.param


@pytest.fixture(autouse=True)
def _restore_default_backend():
    """A test that calls ``funcnn.backend.set_backend`` must not leak it into the next test."""
    yield
    funcnn.backend.set_backend(None)


def random_params(net, seed, *, backend="numpy", dtype="float64", bias_scale=0.5):
    """Params of ``net`` with random weights and random NONZERO biases.

    ``init_params`` gives zero biases; with zero biases and a ReLU-like activation
    every pre-activation of a zero input sits on the kink, where finite differences
    and autodiff legitimately disagree. Each bias is ``+-U(0.2, 1) * bias_scale``.
    """
    params = funcnn.init_params(net, seed, backend=backend, dtype=dtype)
    rng = np.random.default_rng([seed, 0xB1A5])
    out = []
    for layer in params:
        n = layer.b.shape[0]
        b = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.2, 1.0, size=n) * bias_scale
        out.append(funcnn.Dense(layer.W, funcnn.to_backend(b, backend, dtype=dtype)))
    return tuple(out)


@pytest.fixture(scope="session")
def make_params():
    """The :func:`random_params` helper (session scoped, so hypothesis tests may use it)."""
    return random_params


def leaves_close(got, want, *, rtol, atol=0.0):
    """Per-leaf check ``max|g - w| <= rtol * max|w| + atol``; returns a list of failures."""
    bad = []
    got_paths = tree_paths(got)
    want_leaves = tree_leaves(want)
    assert len(got_paths) == len(want_leaves), (len(got_paths), len(want_leaves))
    for (path, g), w in zip(got_paths, want_leaves, strict=True):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        assert g.shape == w.shape, f"{path}: shape {g.shape} vs {w.shape}"
        err = float(np.max(np.abs(g - w), initial=0.0))
        scale = float(np.max(np.abs(w), initial=0.0))
        if not (np.isfinite(g).all() and err <= rtol * scale + atol):
            bad.append(f"{path}: max abs error {err:.3g}, reference scale {scale:.3g}")
    return bad


@pytest.fixture(scope="session")
def assert_trees_close():
    """``assert_trees_close(got, want, rtol=..., atol=...)`` with per-leaf messages."""

    def check(got, want, *, rtol, atol=0.0):
        bad = leaves_close(got, want, rtol=rtol, atol=atol)
        assert not bad, "leaves differ:\n  " + "\n  ".join(bad)

    return check
