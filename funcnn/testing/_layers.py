"""One layer's hand-written backward pass against autodiff: the gradients of its params
and of its input, as a vector-Jacobian product with a random cotangent."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import numpy as np

from funcnn import random
from funcnn.backend import _import_jax, array_namespace, jax_available, to_backend
from funcnn.layers import Layer
from funcnn.testing._grads import check_gradient
from funcnn.testing._reports import LeafReport, _raise_if_bad, _resolve_reference, _x64
from funcnn.tree import tree_leaves, tree_unflatten

__all__ = ["check_layer"]

_RTOL = {"float64": {"jax": 1e-7, "finite_differences": 1e-5},
         "float32": {"jax": 1e-4, "finite_differences": 1e-4}}
# the roundoff of a gradient that is exactly 0, relative to the largest gradient element
_ZERO_LEAF = {"float64": {"jax": 1e-12, "finite_differences": 1e-8},
              "float32": {"jax": 1e-5, "finite_differences": 1e-5}}
_TIE_VALUES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


class _Args(NamedTuple):  # what the check differentiates: the report paths params... and x
    params: Any
    x: Any


def check_layer(
    layer: Layer, in_shape: tuple[int, ...], *, backend: str = "numpy", dtype: str = "float64",
    key: Any = 0, train: bool = True, batch: int = 4, x: Any = None, reference: str = "jax",
    rtol: float | None = None, atol: float | None = None, eps: float = 1e-6,
    max_per_leaf: int | None = 64,
) -> list[LeafReport]:
    """Check ``layer.backward`` (the gradients of the params AND of the input) against the
    vector-Jacobian product of ``layer.forward``; raise ``GradientMismatch`` on a mismatch.

    From ``key``: the layer's initial params, each leaf moved by ``N(0, 0.5**2)`` (so that
    no scale sits at 1 and no bias at 0) and each state leaf up by ``|N(0, 0.5**2)|``; an
    input ``x`` of shape ``(batch, *in_shape)`` (or your own ``x``); a cotangent ``dy ~
    N(0, 1)`` of the output's shape; the dropout key. ``forward(train=train)`` then
    ``backward(dy)`` run on ``backend`` in ``dtype``; the referee is ``jax.grad`` of
    ``sum(dy * forward(params, x))`` in float64 (``reference="jax"``) or its central finite
    differences (``"finite_differences"``, NumPy only, ``max_per_leaf`` elements a leaf).

    Against jax, a drawn ``x`` is checked a second time with ties and zeros in it (values
    from {-1, -0.5, 0, 0.5, 1}): where max-pooling must choose among tied elements and a
    ReLU sits on its kink, ``jax.grad`` of the forward pass referees the convention.
    Finite differences see no derivative there; they check the drawn ``x`` only.

    ``rtol`` defaults to 1e-7 against jax in float64, 1e-5 against finite differences,
    1e-4 in float32; ``atol`` to 1e-12 (finite differences: 1e-8; float32: 1e-5) times the
    largest element of the hand-written gradients: the roundoff of a gradient that is
    exactly 0 (a bias before a BatchNorm). A bug that inflates a leaf still fails there,
    by its relative error.
    Returns one :class:`LeafReport` per leaf, labelled ``params.W``, ``params[2].scale``,
    ``x``, and ``... at the tied input``.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"check_layer needs a layer of funcnn.layers; got {type(layer).__name__}")
    if dtype not in _RTOL:
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    reference = _resolve_reference(reference)
    rtol = _RTOL[dtype][reference] if rtol is None else rtol
    k_init, k_noise, k_x, k_dy, k_drop = random.split(random.as_key(key, "numpy"), 5)
    params, state, _ = layer.init(k_init, in_shape, "float64", backend="numpy")
    params = _moved(params, k_noise, 0, np.asarray)
    state = _moved(state, k_noise, len(tree_leaves(params)), np.abs)
    inputs = [("", x)]
    if x is None:
        inputs = [("", np.asarray(random.normal(k_x, (batch, *in_shape), "float64")))]
        if reference == "jax":
            draws = np.asarray(random.uniform(random.fold_in(k_x, 1), (batch, *in_shape),
                                              "float64"))
            inputs.append((" at the tied input", _TIE_VALUES[(draws * 5).astype(int)]))
    uses_jax = backend == "jax" or reference == "jax"
    with _x64() if uses_jax and jax_available() else contextlib.nullcontext():
        reports, scale = [], 0.0
        for suffix, x0 in inputs:
            found, largest = _check_at(layer, params, state, np.asarray(x0, np.float64), backend,
                                       dtype, train, k_dy, k_drop, reference, eps, max_per_leaf,
                                       suffix)
            reports, scale = reports + found, max(scale, largest)
    atol = _ZERO_LEAF[dtype][reference] * scale if atol is None else atol
    what = "jax.grad" if reference == "jax" else "finite differences"
    _raise_if_bad(reports, rtol, atol, what,
                  check=f"check_layer of {layer!r} on inputs (m, {', '.join(map(str, in_shape))})")
    return reports


def _check_at(layer, params, state, x, backend, dtype, train, k_dy, k_drop, reference, eps,
              max_per_leaf, suffix) -> tuple[list[LeafReport], float]:
    """The reports of one input (the hand-written pass on ``backend`` in ``dtype``, the
    referee in float64; raising is left to the caller) and the largest gradient element."""
    dy = np.asarray(random.normal(k_dy, (x.shape[0], *layer.output_shape(x.shape[1:])),
                                  "float64"))
    p, s, xb, dyb = to_backend((params, state, x, dy), backend, dtype=dtype)
    hand = _jitted("hand") if backend == "jax" else _hand_pass
    grads, dx = hand(layer, train, p, s, xb, dyb, k_drop)
    dy = np.asarray(to_backend(dyb, "numpy"), np.float64)  # as the hand-written pass saw it
    if reference == "jax":  # one compiled program per layer and shape, not one per operation
        def linearised(args):
            st, cot = to_backend((state, dy), "jax")
            return _jitted("linearised")(layer, train, args, st, cot, k_drop)
    else:
        def linearised(args):
            return _linearised(layer, train, args, state, dy, k_drop)
    reports = check_gradient(linearised, _Args(grads, dx), _Args(params, x), reference=reference,
                             rtol=np.inf, eps=eps, max_per_leaf=max_per_leaf, name="")
    largest = max((float(np.max(np.abs(np.asarray(leaf, np.float64)), initial=0.0))
                   for leaf in tree_leaves(to_backend((grads, dx), "numpy"))), default=0.0)
    return [r._replace(path=r.path.removeprefix(".") + suffix) for r in reports], largest


def _hand_pass(layer, train, params, state, x, dy, key):
    """The layer's forward then its hand-written backward pass: ``(grads, dx)``."""
    _, cache, _ = layer.forward(params, state, x, train=train, key=key)
    return layer.backward(params, cache, dy)


def _linearised(layer, train, args, state, dy, key):
    """``<dy, forward(params, x)>``: its gradient is what the backward pass must give."""
    out = layer.forward(args.params, state, args.x, train=train, key=key)[0]
    return array_namespace(out).sum(dy * out)


@functools.cache
def _jitted(name: str):
    """``_hand_pass`` or ``_linearised`` under ``jax.jit`` (the layer and ``train`` static),
    made once, so that a layer checked again at the same shapes is not compiled again."""
    fn = {"hand": _hand_pass, "linearised": _linearised}[name]
    return _import_jax()[0].jit(fn, static_argnums=(0, 1))


def _moved(tree: Any, key: Any, first: int, transform) -> Any:
    """Each leaf plus ``transform(0.5 * N(0, 1))``, leaf ``i`` drawn from
    ``fold_in(key, first + i)``."""
    leaves = tree_leaves(tree)
    moved = [np.asarray(leaf, np.float64)
             + transform(0.5 * np.asarray(random.normal(random.fold_in(key, first + i),
                                                        leaf.shape, "float64")))
             for i, leaf in enumerate(leaves)]
    return tree_unflatten(tree, moved)

