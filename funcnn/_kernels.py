"""The fused loops of the NumPy backend, compiled by numba: each reads its arrays once.

Loaded only by :mod:`funcnn._fused` on first use, never by ``import funcnn`` (this module
imports numba at its top). Each kernel is the loop form of a pure NumPy function that
stays the reference, written in the same order of operations so that float64 agrees to
rounding and most float32 results agree to the bit (``tests/test_fused.py``):

======================  ==============================================================
kernel                  the reference it fuses
======================  ==============================================================
``sgd``                 ``funcnn.optim._sgd._sgd_leaf``
``rmsprop``             ``funcnn.optim._rmsprop._rmsprop_leaf``
``adagrad``             ``funcnn.optim._adagrad._adagrad_leaf``
``adam``                ``funcnn.optim._adam.adam_leaf_folded`` (Adam and AdamW)
``bias_activation``     ``z += b; h = g(z)`` of ``funcnn.mlp.apply`` (relu, leaky_relu)
``bias_softmax``        ``z += b; p = softmax(z)`` of ``funcnn.mlp.apply``
``grad_product``        ``dz = da * mask * g'(z, h)`` of ``layers.Dense``'s backward (6 of 8)
``cross_entropy``       ``funcnn.losses.cross_entropy`` for integer labels
``cross_entropy_delta`` ``funcnn.losses.cross_entropy_delta`` for integer labels
======================  ==============================================================

Optimizer kernels take flat (1-D) leaves and write fresh arrays; the others take
``(m, n)`` arrays and write into the fresh product the caller hands them. Every number a
kernel computes with is an argument of the arrays' dtype (``c``, the :data:`CONSTANTS` in
that dtype, for the activations): a float64 literal would promote float32 maths to float64.
Serial loops (``parallel=False``): the results cannot depend on the thread count, and the
subnormal flushing of ``funcnn.flush_denormals`` (a per-thread register) applies, as it
does to NumPy; ``docs/performance.md`` says what threads would take.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["BACKWARD", "CONSTANTS", "FORWARD", "adagrad", "adam", "bias_activation",
           "bias_softmax", "cross_entropy", "cross_entropy_delta", "grad_product", "rmsprop", "sgd"]

jit = numba.njit(cache=True, nogil=True, error_model="numpy")  # x / 0 as NumPy: inf, nan
inline = numba.njit(cache=True, inline="always", error_model="numpy")

# indices into CONSTANTS: zero, one, one half, leaky slope, ELU alpha
ZERO, ONE, HALF, SLOPE, ALPHA = range(5)
CONSTANTS = (0.0, 1.0, 0.5, 0.01, 1.0)
"""The numbers of :mod:`funcnn.activations`, in order; passed as an array of the dtype."""

# ---------------------------------------------------------------------------- activations
# An activation is ``kind``, its index in FORWARD or BACKWARD. Each kernel calls its loop
# once per kind with the kind as a literal: numba inlines the loop, LLVM folds the switch
# away, and every activation gets a loop of its own that it can vectorise (a loop that
# switched inside on a variable ran 10x slower). Only activations without a transcendental
# function are fused forward: NumPy's SIMD tanh and exp beat a loop calling the C
# library's by 10x or more. Their derivatives, written from ``a = g(z)``, are fused too.

FORWARD = ("relu", "leaky_relu")
BACKWARD = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid")


@inline
def _act(kind, z, c):
    """``g(z)`` for one element: relu (NaN stays NaN, as NumPy's maximum), leaky_relu."""
    if kind == 0:
        return z if z > c[ZERO] or z != z else c[ZERO]
    return z if z > c[ZERO] else c[SLOPE] * z


@inline
def _act_grad(kind, z, a, c):
    """``g'(z)`` for one element from ``z`` and ``a = g(z)``, in the order of BACKWARD."""
    if kind == 0:
        return c[ONE]
    if kind == 1:
        return c[ONE] if z > c[ZERO] else c[ZERO]
    if kind == 2:
        return c[ONE] if z > c[ZERO] else c[SLOPE]
    if kind == 3:
        return c[ONE] if z > c[ZERO] else a + c[ALPHA]
    if kind == 4:
        return c[ONE] - a * a
    return a * (c[ONE] - a)


@inline
def _bias_activation_loop(z, b, h, c, kind):
    m, n = z.shape
    for i in range(m):
        for j in range(n):
            zz = z[i, j] + b[j]
            z[i, j] = zz
            h[i, j] = _act(kind, zz, c)


@jit
def bias_activation(z, b, h, c, kind):
    """``z += b`` (in place) and ``h = g(z)``, ``g = FORWARD[kind]``; ``z, h``: (m, n),
    ``b``: (n,)."""
    if kind == 0:
        _bias_activation_loop(z, b, h, c, 0)
    else:
        _bias_activation_loop(z, b, h, c, 1)


@inline
def _grad_product_loop(da, mask, z, a, out, c, kind):
    m, n = da.shape
    for i in range(m):
        for j in range(n):
            d = da[i, j] if mask is None else da[i, j] * mask[i, j]
            out[i, j] = d * _act_grad(kind, z[i, j], a[i, j], c)


@jit
def grad_product(da, mask, z, a, out, c, kind):
    """``out = da * mask * g'(z, a)``, ``g = BACKWARD[kind]``, all (m, n); ``mask`` may be
    None. ``da`` is only read: it may be the caller's array (a residual block's skip)."""
    if kind == 0:
        _grad_product_loop(da, mask, z, a, out, c, 0)
    elif kind == 1:
        _grad_product_loop(da, mask, z, a, out, c, 1)
    elif kind == 2:
        _grad_product_loop(da, mask, z, a, out, c, 2)
    elif kind == 3:
        _grad_product_loop(da, mask, z, a, out, c, 3)
    elif kind == 4:
        _grad_product_loop(da, mask, z, a, out, c, 4)
    else:
        _grad_product_loop(da, mask, z, a, out, c, 5)


@jit
def bias_softmax(z, b, p, c):
    """``z += b`` (in place) and ``p = softmax(z)`` row by row; ``z, p``: (m, k)."""
    m, k = z.shape
    for i in range(m):
        top = z[i, 0] + b[0]
        for j in range(k):
            zz = z[i, j] + b[j]
            z[i, j] = zz
            top = max(top, zz)
        total = c[ZERO]
        for j in range(k):
            e = math.exp(z[i, j] - top)
            p[i, j] = e
            total += e
        for j in range(k):
            p[i, j] = p[i, j] / total


@jit
def cross_entropy(z, y, c):
    """``mean_i [logsumexp(z_i) - z_i[y_i]]`` over the rows of ``z`` (m, k), summed in row
    order (the same for any thread count); NaN if a label is outside [0, k)."""
    m, k = z.shape
    total = c[ZERO]
    for i in range(m):
        label = y[i]
        if not 0 <= label < k:
            return c[ZERO] / c[ZERO]
        top = z[i, 0]
        for j in range(k):
            top = max(top, z[i, j])
        s = c[ZERO]
        for j in range(k):
            s += math.exp(z[i, j] - top)
        total += math.log(s) + top - z[i, label]
    return total / m


@jit
def cross_entropy_delta(p, y, out, inv_m, c):
    """``out = (p - onehot(y)) * inv_m``, a row of NaN where ``y`` is outside [0, k)."""
    m, k = p.shape
    for i in range(m):
        label = y[i]
        valid = 0 <= label < k
        for j in range(k):
            if not valid:
                out[i, j] = c[ZERO] / c[ZERO]
            elif j == label:
                out[i, j] = (p[i, j] - c[ONE]) * inv_m
            else:
                out[i, j] = p[i, j] * inv_m


# ---------------------------------------------------------------------------- optimizers


@jit
def sgd(p, g, v, lr, momentum, nesterov, weight_decay, has_momentum, has_decay):
    """One pass of ``_sgd_leaf``: ``(p_new, v_new)`` (``v_new`` empty without momentum)."""
    n = p.size
    p_new = np.empty_like(p)
    v_new = np.empty_like(p) if has_momentum else np.empty_like(p[:0])
    for i in range(n):
        gi = g[i] + weight_decay * p[i] if has_decay else g[i]
        if has_momentum:
            vi = momentum * v[i] + gi
            v_new[i] = vi
            step = gi + momentum * vi if nesterov else vi
            p_new[i] = p[i] - lr * step
        else:
            p_new[i] = p[i] - lr * gi
    return p_new, v_new


@jit
def rmsprop(p, g, nu, velocity, mu, lr, decay, one_minus_decay, eps, momentum, centered,
            has_momentum):
    """One pass of ``_rmsprop_leaf``: fresh ``p, nu, velocity, mu`` (the last two empty
    when unused: the caller passes the old ones on)."""
    n = p.size
    p_new, nu_new = np.empty_like(p), np.empty_like(p)
    vel_new = np.empty_like(p) if has_momentum else np.empty_like(p[:0])
    mu_new = np.empty_like(p) if centered else np.empty_like(p[:0])
    for i in range(n):
        gi = g[i]
        nui = decay * nu[i] + one_minus_decay * gi * gi
        nu_new[i] = nui
        if centered:
            mui = decay * mu[i] + one_minus_decay * gi
            mu_new[i] = mui
            step = gi / (math.sqrt(nui - mui * mui) + eps)
        else:
            step = gi / (math.sqrt(nui) + eps)
        if has_momentum:
            step = momentum * velocity[i] + step
            vel_new[i] = step
        p_new[i] = p[i] - lr * step
    return p_new, nu_new, vel_new, mu_new


@jit
def adagrad(p, g, s, lr, eps):
    """One pass of ``_adagrad_leaf``: fresh ``(p, s)``."""
    n = p.size
    p_new, s_new = np.empty_like(p), np.empty_like(p)
    for i in range(n):
        si = s[i] + g[i] * g[i]
        s_new[i] = si
        p_new[i] = p[i] - lr * g[i] / (math.sqrt(si) + eps)
    return p_new, s_new


@jit
def adam(p, g, m, v, mask, decay_mode, b1, b2, one_minus_b1, one_minus_b2, step_size, eps_hat,
         decay):
    """One pass of ``adam_leaf_folded``: fresh ``(p, m, v)``. ``decay_mode`` 0: no weight
    decay, 1: every entry, 2: where ``mask`` (0/1 in the dtype, like ``p``) says so."""
    n = p.size
    p_new, m_new, v_new = np.empty_like(p), np.empty_like(p), np.empty_like(p)
    for i in range(n):
        gi = g[i]
        mi = gi * one_minus_b1 + b1 * m[i]
        vi = gi * gi * one_minus_b2 + b2 * v[i]
        m_new[i] = mi
        v_new[i] = vi
        pi = mi / (math.sqrt(vi) + eps_hat) * -step_size + p[i]
        if decay_mode == 1:
            pi -= decay * p[i]
        elif decay_mode == 2:
            pi -= decay * (mask[i] * p[i])
        p_new[i] = pi
    return p_new, m_new, v_new
