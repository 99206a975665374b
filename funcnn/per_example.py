"""Per-example gradients, their norms and DP-SGD clipping, from the hand-written backward pass.

The batch gradient of the mean loss is a sum over examples,
``dW[l] = inputs[l].T @ dz = sum_i outer(inputs[l][i], dz[i])``, so the hand-written
pass already holds every example's contribution. With ``m`` rows, the delta of example
``i``'s own loss is ``delta[l][i] = m * dz[i]`` (each row of ``dz`` carries the ``1/m`` of
the mean), and::

    g_i[l].W  = outer(inputs[l][i], delta[l][i])     (n_l, n_{l+1})
    g_i[l].b  = delta[l][i]                          (n_{l+1},)
    ||g_i||^2 = sum_l ||delta[l][i]||^2 * (||inputs[l][i]||^2 + 1)

since ``||outer(a, d)||_F = ||a|| ||d||``. An example's own loss is its cross-entropy, or
the mean over its ``k`` outputs for binary cross-entropy and MSE (so that the mean of the
per-example losses is :func:`funcnn.loss`). A custom ``Loss`` qualifies when its value is
such a mean over rows and row ``i`` of its delta depends on row ``i`` alone.

DP-SGD (Abadi et al., 2016), the step Opacus computes, clips each example's gradient to
``max_norm`` C, sums, adds Gaussian noise of standard deviation ``noise_multiplier * C``
to every element and divides by the batch size::

    s_i = min(1, C / ||g_i||) = C / max(||g_i||, C)
    g   = (sum_i s_i g_i + noise_multiplier * C * N(0, I)) / m
        = (inputs[l].T @ (delta[l] * s[:, None]) + noise) / m      one GEMM per layer

so neither the norms nor the clipped sum ever materialise a per-example weight gradient.
The norms are computed scaled by each example's largest element (as LAPACK's ``nrm2``
scales), so a float32 gradient of 1e20, whose square overflows, clips to ``C`` instead of
being dropped, and one of 1e-30 keeps its norm instead of 0.

**The DP-SGD gradient in training.** :func:`dp_grad` returns a training step's gradient
function (the contract is in :mod:`funcnn.step`)::

    grad_fn(net, params, cache, dz, *, rows, key) -> grads

    step = funcnn.make_train_step(net, opt, grad_fn=funcnn.per_example.dp_grad(1.0, 1.1))
    funcnn.fit(net, params, opt, x, y, ..., grad_fn=funcnn.per_example.dp_grad(1.0, 1.1))

``dz`` is the output delta of the batch's mean loss over ``rows`` examples (the rows of a
padded short batch past them are zero and get no weight), so row ``i``'s own delta is
``rows * dz[i]``; the noise is drawn from ``fold_in(key, NOISE_STREAM)``, apart from the
dropout masks drawn from the step's ``key``. It goes with every optimizer.

**Nets of layers.** For a ``funcnn.Net`` the same quantities come from each layer's own
per-example pass (:mod:`funcnn.layers`), sent from the last layer to the first with
``dy = m * dz``, each example's own delta::

    grads_l[i], dy = f_l.backward_per_example(params_l, cache_l, dy)     leaves (m, ...)
    sq_l,       dy = f_l.backward_sq_norms(params_l, cache_l, dy)        (m,)
    ||g_i||^2      = sum_l sq_l[i]

and the clipped sum, linear in ``dy``, is one plain backward pass from reweighted rows::

    sum_i s_i g_i / rows = backward(net, params, cache, dz=dy * s[:, None] / rows)

one squared-norm pass and one backward pass, no per-example weight gradient. Each row of
``dy`` is first divided by its largest ``|element|`` (``||g_i||`` is that times the norm
from the unit row: the gradient is linear in ``dy``), so a huge or tiny loss delta
neither overflows nor underflows; the layers' squares themselves are not scaled, so in
float32 activations or weights whose gradient norm passes about ``1e19`` (for a unit
``dy``) overflow to ``inf``, and such an example gets a norm ``inf`` and a clipping weight
0; one below about ``1e-23`` reads 0 and is left unclipped (as it should be). A net
with model state takes ``state=`` (read only: nothing is returned for it); BatchNorm in
evaluation (``train=False``, its running statistics) has per-example
gradients, in training (``train=True``, and so in a training step with :func:`dp_grad`)
it raises ``funcnn.layers.PerExampleError`` naming the layer's place, as ``layers[2]``.

The functions taking ``(net, params, x, y)`` check their arguments as
``funcnn.value_and_grad`` does; ``example_deltas``, ``grads_from_cache``,
``norms_from_cache``, ``grad_and_norms_from_cache`` and ``clipped_grad_from_cache`` are
the check-free pieces for a jitted loop. All run on NumPy and jax (also under
``jax.jit``) and keep float32 float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from funcnn import random
from funcnn._checks import check_positive
from funcnn.activations import get_activation
from funcnn.backend import array_namespace, check_same_backend, concrete_value, is_jax_array
from funcnn.checked import check_params, prepare
from funcnn.layers import Serial
from funcnn.losses import get_loss
from funcnn.mlp import MLP, Dense
from funcnn.network import Cache, apply, backward, check_net
from funcnn.tree import tree_leaves, tree_unflatten
from funcnn.types import Array, Grads, Key, Params

__all__ = [
    "NOISE_STREAM",
    "DPGrad",
    "clipped_grad_from_cache",
    "clipped_mean_grad",
    "dp_grad",
    "example_deltas",
    "grad_and_norms_from_cache",
    "grads_from_cache",
    "norms_from_cache",
    "per_example_grad_norms",
    "per_example_grads",
]


# ---------------------------------------------------------------------------- check-free pieces


def example_deltas(net: Any, params: Params, cache: Cache, y: Array) -> tuple:
    """Each example's ``dL_i/dzs[l]``: one ``(m, n_{l+1})`` array per layer, 0-based.

    The backward pass of :func:`funcnn.backward` without its weight products, started
    from ``m`` times the loss delta (the gradient of each row's own loss, not of the mean).
    An MLP's only: a ``Net``'s layers hold other arrays than dense deltas.
    """
    if not isinstance(net, MLP):
        raise TypeError("example_deltas are the deltas of an MLP's dense layers; got a "
                        f"{type(net).__name__} (grads_from_cache and norms_from_cache take "
                        "any net)")
    m = cache.zs[-1].shape[0]
    return _deltas(net, params, cache, get_loss(net.loss).delta(net.output, cache.zs[-1],
                                                                cache.out, y) * m)


def _deltas(net: Any, params: Params, cache: Cache, dz: Array) -> tuple:
    """Each example's deltas from the output layer's, ``dz`` ``(m, k)``, sent down."""
    g_grad = get_activation(net.hidden).grad
    deltas = [dz] * len(params)
    for l in range(len(params) - 1, 0, -1):
        da = deltas[l] @ params[l].W.T                 # (m, n_l): into the layer below
        if cache.masks[l - 1] is not None:
            da = da * cache.masks[l - 1]               # dropout passes gradient where it kept
        deltas[l - 1] = da * g_grad(cache.zs[l - 1], cache.hidden[l - 1])
    return tuple(deltas)


def _outer_grads(inputs: tuple, deltas: tuple) -> Grads:
    """``Dense(W=(m, n_in, n_out), b=(m, n_out))`` per layer: ``outer(a_i, delta_i)``."""
    xp = array_namespace(deltas[0])
    return tuple(Dense(xp.einsum("mi,mo->mio", a, d), d)
                 for a, d in zip(inputs, deltas, strict=True))


def _scaled_norms(inputs: tuple, deltas: tuple) -> tuple[Array, Array]:
    """``(peak, r)``, both ``(m,)``, with ``||g_i|| = peak_i * r_i``: ``peak_i`` the largest
    ``|element|`` of ``g_i`` and ``r_i`` in ``[1, sqrt(g_i.size)]``.

    Scaled as LAPACK's ``nrm2`` scales, so that no square overflows or underflows (in
    float32 a gradient of 1e20 would square to inf, one of 1e-30 to 0). Per layer, with
    ``D = max|d_i|``, ``A = max(max|a_i|, 1)`` and so ``P = D A`` the layer's largest
    element (of ``W``'s ``outer(a_i, d_i)`` when ``A > 1``, else of ``b``)::

        ||d_i||^2 (||a_i||^2 + 1) = P^2 ||d_i / D||^2 (||a_i / A||^2 + A^-2)
        r_i^2 = sum_l (P_l / peak_i)^2 ||d_i / D_l||^2 (||a_i / A_l||^2 + A_l^-2)
    """
    xp = array_namespace(deltas[0])
    peaks, sums = [], []
    for a, d in zip(inputs, deltas, strict=True):
        top_d = xp.max(xp.abs(d), axis=1)                              # (m,)
        top_a = xp.maximum(xp.max(xp.abs(a), axis=1), 1)               # (m,)
        unit_d = d / xp.where(top_d > 0, top_d, 1)[:, None]           # |.| <= 1
        unit_a = a / top_a[:, None]                                    # |.| <= 1
        sums.append(xp.sum(unit_d * unit_d, axis=1)
                    * (xp.sum(unit_a * unit_a, axis=1) + (1 / top_a) ** 2))
        peaks.append(top_d * top_a)
    peak = functools.reduce(xp.maximum, peaks)
    safe = xp.where(peak > 0, peak, 1)
    r = xp.sqrt(sum((p / safe) ** 2 * t for p, t in zip(peaks, sums, strict=True)))
    return peak, r


def _unscale(peak: Array, r: Array) -> Array:
    """``||g_i|| = peak * r``, ``(m,)``: finite whenever the norm is representable, inf
    where ``peak`` is (``r`` is NaN there: ``inf / inf``)."""
    xp = array_namespace(peak)
    return xp.where(xp.isinf(peak), peak, peak * r)


def _own_delta(net: Any, cache: Cache, y: Array) -> Array:
    """``(m, k)``: row ``i`` the gradient of example ``i``'s own loss at the logits,
    ``m`` times the delta of the mean."""
    return get_loss(net.loss).delta(net.output, cache.z, cache.out, y) * cache.z.shape[0]


def _layer_norms(net: Any, params: Params, cache: Cache, dy: Array):
    """``(peak, r, unit)`` of a net of layers from each example's own delta ``dy``
    ``(m, k)``: ``peak_i = max|dy_i|``, ``unit = dy / peak`` (rows of largest element 1,
    zero rows kept) and ``r_i`` the gradient norm from ``unit_i``, so ``||g_i|| = peak_i
    r_i``: one pass of the layers' ``backward_sq_norms`` (a ``PerExampleError`` names the
    layer's place, as ``layers[2]``)."""
    xp = array_namespace(dy)
    peak = xp.max(xp.abs(dy), axis=1)                                   # (m,)
    unit = dy / xp.where(peak > 0, peak, 1)[:, None]                    # |.| <= 1
    sq, _ = Serial(net.layers).backward_sq_norms(params, cache.layers, unit)
    return peak, xp.sqrt(sq), unit


def grads_from_cache(net: Any, params: Params, cache: Cache, y: Array) -> Grads:
    """Per-example gradients from a forward cache (no checks); see :func:`per_example_grads`."""
    if not isinstance(net, MLP):
        dy = _own_delta(net, cache, y)
        return Serial(net.layers).backward_per_example(params, cache.layers, dy)[0]
    return _outer_grads(cache.inputs, example_deltas(net, params, cache, y))


def norms_from_cache(net: Any, params: Params, cache: Cache, y: Array) -> Array:
    """Per-example global gradient norms ``(m,)`` from a forward cache (no checks)."""
    if not isinstance(net, MLP):
        return _unscale(*_layer_norms(net, params, cache, _own_delta(net, cache, y))[:2])
    return _unscale(*_scaled_norms(cache.inputs, example_deltas(net, params, cache, y)))


def grad_and_norms_from_cache(net: Any, params: Params, cache: Cache, y: Array):
    """``(batch gradient, per-example norms (m,))`` from one backward pass (no checks).

    The gradient is that of :func:`funcnn.backward` (up to rounding), computed from
    the per-example deltas, so a loop that logs the norms pays for one pass, not two (an
    MLP; a ``Net`` runs :func:`funcnn.backward` and the squared-norm pass).
    """
    if not isinstance(net, MLP):
        return backward(net, params, cache, y), norms_from_cache(net, params, cache, y)
    deltas = example_deltas(net, params, cache, y)
    scale = 1.0 / deltas[0].shape[0]
    grads = []
    for a, d in zip(cache.inputs, deltas, strict=True):
        d = d * scale
        grads.append(Dense(a.T @ d, d.sum(axis=0)))
    return tuple(grads), _unscale(*_scaled_norms(cache.inputs, deltas))


def clipped_grad_from_cache(
    net: Any, params: Params, cache: Cache, y: Array, *, max_norm: float,
    noise_multiplier: float = 0.0, key: Key | None = None,
) -> tuple[Grads, Array]:
    """``(DP gradient, per-example norms before clipping)`` from a forward cache.

    The gradient is ``(sum_i min(1, C / ||g_i||) g_i + noise) / m`` with ``C = max_norm``
    and noise ``noise_multiplier * C * N(0, I)``: one standard normal draw from ``key``
    of all the parameters at once, laid out leaf by leaf (``W[0], b[0], W[1], ...``, each
    row-major; for a ``Net`` its params' leaves in order). ``max_norm`` and
    ``noise_multiplier`` are Python numbers, already checked (see :class:`DPGrad`).
    """
    if not isinstance(net, MLP):
        dz = get_loss(net.loss).delta(net.output, cache.z, cache.out, y)
        return _clipped_layers(net, params, cache, dz, cache.z.shape[0], max_norm,
                               noise_multiplier, key)
    m = cache.zs[-1].shape[0]
    dz = get_loss(net.loss).delta(net.output, cache.zs[-1], cache.out, y)
    return _clipped(net, params, cache, dz, m, max_norm, noise_multiplier, key)


def _clipped(net: Any, params: Params, cache: Cache, dz: Array, rows: Any, max_norm: float,
             noise_multiplier: float, key: Key | None) -> tuple[Grads, Array]:
    """:func:`clipped_grad_from_cache` from the delta ``dz`` of a mean over ``rows`` examples
    (an int, or a 0-d array when traced); rows of ``dz`` past them are zero: they add nothing."""
    xp = array_namespace(dz)
    if not isinstance(rows, int):
        rows = xp.asarray(rows, dtype=dz.dtype)
    deltas = _deltas(net, params, cache, dz * rows)        # each example's own deltas
    peak, r = _scaled_norms(cache.inputs, deltas)
    # s_i d_i / rows = (d_i / peak_i) * min(peak_i, C / r_i) / rows: no factor overflows or
    # underflows, so any finite g_i (even of norm 1e20 in float32) clips to norm C.
    # r_i >= 1 exactly unless g_i = 0 (then r_i = 0 and the weight is 0 * d_i anyway).
    safe = xp.where(peak > 0, peak, 1)[:, None]                             # (m, 1)
    weight = (xp.minimum(peak, max_norm / xp.maximum(r, 1)) / rows)[:, None]
    grads = []
    for a, d in zip(cache.inputs, deltas, strict=True):
        dw = d / safe * weight                              # (m, n_out): clipped, / rows
        grads.append(Dense(a.T @ dw, dw.sum(axis=0)))
    if noise_multiplier > 0:                                # std of the noise after the / rows
        grads = _add_noise(tuple(grads), noise_multiplier * max_norm / rows, key,
                           noise_multiplier)
    return tuple(grads), _unscale(peak, r)


def _clipped_layers(net: Any, params: Params, cache: Cache, dz: Array, rows: Any,
                    max_norm: float, noise_multiplier: float,
                    key: Key | None) -> tuple[Grads, Array]:
    """:func:`_clipped` for a net of layers: the clipped sum is linear in each example's
    delta, so it is one backward pass from the rows ``unit_i * min(peak_i, C / r_i) /
    rows`` (``= dy_i s_i / rows``, see :func:`_layer_norms`): no factor overflows."""
    xp = array_namespace(dz)
    if not isinstance(rows, int):
        rows = xp.asarray(rows, dtype=dz.dtype)
    peak, r, unit = _layer_norms(net, params, cache, dz * rows)
    # r_i = 0 when g_i's squares are 0 (or underflow): C / r_i is then infinite, the weight
    # peak_i. Else r_i >= sqrt(smallest subnormal) (4e-23 in float32): C / r_i is finite.
    positive = r > 0
    weight = xp.where(positive, xp.minimum(peak, max_norm / xp.where(positive, r, 1)),
                      peak) / rows                                                # (m,)
    grads = backward(net, params, cache, None, dz=unit * weight[:, None])
    if noise_multiplier > 0:
        grads = _add_noise(grads, noise_multiplier * max_norm / rows, key, noise_multiplier)
    return grads, _unscale(peak, r)


def _add_noise(grads: Grads, std: Any, key: Key | None, noise_multiplier: float) -> Grads:
    """``grads + std * N(0, I)``, the normals drawn at once and cut leaf by leaf."""
    if key is None:
        raise ValueError(
            f"noise_multiplier={noise_multiplier} adds Gaussian noise, which needs a key "
            "(a funcnn.random key or int seed, independent of the dropout key); pass "
            "noise_multiplier=0.0 for clipping without noise"
        )
    leaves = tree_leaves(grads)
    if not leaves:
        return grads
    backend = "jax" if is_jax_array(leaves[0]) else "numpy"
    total = sum(leaf.size for leaf in leaves)
    noise = random.normal(random.as_key(key, backend), (total,), leaves[0].dtype) * std
    out, start = [], 0
    for leaf in leaves:
        out.append(leaf + noise[start:start + leaf.size].reshape(leaf.shape))
        start += leaf.size
    return tree_unflatten(grads, out)


# ---------------------------------------------------------------------------- in training


def _setting(name: str, value: Any, *, allow_zero: bool) -> float:
    if is_jax_array(value) and concrete_value(value) is None:
        raise TypeError(
            f"{name} must be a Python number, not a traced value: it decides the program "
            "(noise or not) and is compiled in (close over it, or make it a static argument "
            "of jax.jit)"
        )
    check_positive(name, value, allow_zero=allow_zero)
    return float(value)


NOISE_STREAM = 0x4E4F495A
"""A step's noise key is ``fold_in(step key, NOISE_STREAM)``: far from the small indices
at which ``fold_in`` meets ``split`` (under jax's partitionable threefry,
``fold_in(k, i) == split(k, n)[i]``), so it never equals a dropout mask's key."""


@dataclass(frozen=True)
class DPGrad:
    """The DP-SGD gradient as a training step's gradient function (see :mod:`funcnn.step`):
    ``grad_fn(net, params, cache, dz, *, rows, key) -> grads``.

    Args:
      max_norm: the clipping norm ``C`` of each example's gradient, positive and finite.
      noise_multiplier: the noise's standard deviation in units of ``C`` (``sigma`` of
        Abadi et al. and Opacus), ``>= 0``; ``0`` clips without noise.

    Calling it returns ``(sum_i min(1, C / ||g_i||) g_i + noise) / rows`` over the first
    ``rows`` examples (the rest, padding, have a zero ``dz`` and count for nothing), the
    noise drawn from ``fold_in(key, NOISE_STREAM)``; ``key`` (the step's key) may be
    ``None`` only without noise. Equal settings compare and hash equal (``1`` and ``1.0``
    too), so a jitted loop compiles once for them.
    """

    max_norm: float
    noise_multiplier: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "max_norm",
                           _setting("max_norm", self.max_norm, allow_zero=False))
        object.__setattr__(self, "noise_multiplier",
                           _setting("noise_multiplier", self.noise_multiplier, allow_zero=True))

    def __call__(self, net: Any, params: Params, cache: Cache, dz: Array, *, rows: Any,
                 key: Key | None = None) -> Grads:
        check_net(net)
        noise_key = None if key is None or not self.noise_multiplier else \
            random.fold_in(key, NOISE_STREAM)
        clipped = _clipped if isinstance(net, MLP) else _clipped_layers
        return clipped(net, params, cache, dz, rows, self.max_norm, self.noise_multiplier,
                       noise_key)[0]


def dp_grad(max_norm: float, noise_multiplier: float = 0.0) -> DPGrad:
    """The DP-SGD gradient function of a training step: clip each example to ``max_norm``,
    sum, add noise of standard deviation ``noise_multiplier * max_norm``, average; e.g.
    ``fit(..., grad_fn=dp_grad(1.0, 1.1))``. See :class:`DPGrad`."""
    return DPGrad(max_norm, noise_multiplier)


# ---------------------------------------------------------------------------- checked entry points


def _forward(net, params, x, y, key, train, state):
    """Checks as in ``funcnn.value_and_grad``, then the forward cache and prepared targets
    (the model state only read: ``train=False`` normalises by BatchNorm's running
    statistics, and ``train=True`` leaves BatchNorm to refuse per-example gradients)."""
    check_net(net)
    b = prepare(net, params, x, y, state=state, key=key, train=train)
    return apply(net, params, b.x, b.noise, state=b.state, train=train), b.y


def per_example_grads(
    net: Any, params: Params, x: Array, y: Array, *, key: Key | None = None,
    train: bool = False, state: Any = None,
) -> Grads:
    """Each example's gradient of its own loss, with a leading batch axis.

    Returns the params' tree with every leaf ``(m, *leaf.shape)``: for an MLP a tuple of
    ``Dense(W=(m, n_in, n_out), b=(m, n_out))``, one per layer, ``W[i] =
    outer(inputs[l][i], delta[l][i])``; for a ``Net`` each layer's
    ``backward_per_example``. Their mean over the batch is ``funcnn.backprop``. ``key``
    and ``train`` draw dropout masks as in :func:`funcnn.forward`; ``state`` is the
    model state of a net with BatchNorm (read only, nothing returned for it), whose
    per-example gradients exist with ``train=False`` only (``PerExampleError``
    otherwise). Memory grows as ``m`` times the parameters: for norms or clipping use
    :func:`per_example_grad_norms` or :func:`clipped_mean_grad`.
    """
    cache, y = _forward(net, params, x, y, key, train, state)
    return grads_from_cache(net, params, cache, y)


def per_example_grad_norms(
    net: Any, params: Params, x: Array, y: Array, *, key: Key | None = None,
    train: bool = False, state: Any = None,
) -> Array:
    """Each example's global gradient norm (over all layers, weights and biases), ``(m,)``.

    Computed without forming a per-example weight gradient: for an MLP as ``sqrt(sum_l
    ||delta_l||^2 (||a_l||^2 + 1))``, for a ``Net`` from its layers'
    ``backward_sq_norms``; arguments as for :func:`per_example_grads`. Large norms point
    at hard or mislabelled examples.
    """
    cache, y = _forward(net, params, x, y, key, train, state)
    return norms_from_cache(net, params, cache, y)


def clipped_mean_grad(
    net: Any, params: Params, x: Array, y: Array, *, max_norm: float,
    noise_multiplier: float = 0.0, key: Key | None = None, train: bool = False,
    state: Any = None,
) -> Grads:
    """The DP-SGD gradient of a batch: each example clipped to ``max_norm``, summed,
    noised with ``N(0, (noise_multiplier * max_norm)^2)`` per element, divided by ``m``.

    ``key`` (an int seed or a ``funcnn.random`` key) is needed for noise or for dropout
    (``train=True``); it is split in two: the dropout masks come from
    ``random.split(key)[0]`` (as ``forward(..., key=random.split(key)[0], train=True)``
    draws them) and the noise from ``random.split(key)[1]`` (as
    ``clipped_grad_from_cache(..., key=random.split(key)[1])`` draws it). ``max_norm`` and
    ``noise_multiplier`` must be Python numbers (static under jit); ``state`` as for
    :func:`per_example_grads`.
    """
    settings = DPGrad(max_norm, noise_multiplier)
    check_net(net)
    check_params(net, params)
    drop_key = noise_key = None
    if key is not None:
        drop_key, noise_key = random.split(random.as_key(key, check_same_backend(params)))
    cache, y = _forward(net, params, x, y, drop_key, train, state)
    return clipped_grad_from_cache(net, params, cache, y, max_norm=settings.max_norm,
                                   noise_multiplier=settings.noise_multiplier, key=noise_key)[0]
