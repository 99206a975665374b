"""One training step: forward, loss, gradient, optimizer update, on one mini-batch.

``make_train_step(net, optimizer)`` returns the checked, pure step every loop is made of::

    step = funcnn.make_train_step(net, funcnn.optim.adam(1e-3))
    params, opt_state, loss = step(params, opt_state, xb, yb)          # or jax.jit(step)

**The gradient function** is an argument, ``make_train_step(net, optimizer, grad_fn=...)``
(and ``fit(..., grad_fn=...)``): a pure function::

    grad_fn(net, params, cache, dz, *, rows, key) -> grads

``cache`` the forward ``Cache`` of the batch (its dropout masks in it); ``dz`` ``(m, k)``
the delta ``dL/dzs[-1]`` of the batch's mean loss, over its first ``rows`` examples (an
int, or a traced 0-d int: ``m``, or fewer on a padded short batch, whose other rows of
``dz`` are zero); ``key`` the step's key (``None`` if it has none), from which a gradient
function that draws randomness takes its own stream with ``funcnn.random.fold_in``. It
returns a tree like ``params`` for ``optimizer.update``. :func:`backward_grad`, the
hand-written backward pass, is the default; ``funcnn.per_example.dp_grad(max_norm,
noise_multiplier)`` gives DP-SGD's clipped and noised gradient.

:func:`train_step` is the same step without checks, what ``fit``'s loops call. It can
also train on a *padded* short batch: ``fit`` on jax runs every batch of an epoch, the
short last one included, through one compiled step of ``batch_size`` rows (one copy of
the step in the program instead of two: on MNIST's shapes it compiles in 0.55 s instead
of 0.72 s, and a fresh process's first epoch costs what a hand-written ``jax.grad`` scan's
does, ``docs/performance.md``). The short batch
of ``tail`` rows is padded with other rows of the data, and where ``in_tail`` is true the
loss and its delta ``dL/dz`` are those of the first ``tail`` rows, the padding getting a
zero delta, so the gradient (any gradient function's) is exactly that of the short batch::

    dz = [delta(z[:tail]); 0] if in_tail else delta(z)          (m, k)
    rows = tail if in_tail else m
"""

from __future__ import annotations

import sys
from typing import Any

from funcnn.backend import array_namespace, is_concrete, is_jax_array
from funcnn.checked import prepare
from funcnn.losses import get_loss
from funcnn.network import Cache, Network, apply, backward, check_net, draw_noise
from funcnn.optim import Optimizer
from funcnn.types import Array, Grads, Key, Params

__all__ = [
    "backward_grad",
    "check_grad_fn",
    "check_optimizer",
    "make_train_step",
    "n_correct",
    "train_step",
]


def n_correct(net: Network, out: Any, y: Any, valid: Any = None) -> Any:
    """How many rows are classified right (a fraction per row for multi-label sigmoid);
    ``valid`` (``(m,)`` bool, optional) says which rows count."""
    xp = array_namespace(out)
    if net.loss == "cross_entropy":
        labels = y if y.ndim == 1 else xp.argmax(y, axis=1)
        right = xp.argmax(out, axis=1).astype(labels.dtype) == labels
        return xp.sum(right if valid is None else right & valid)
    if net.loss == "binary_cross_entropy":
        right = (out > 0.5) == (y > 0.5)
        return xp.sum(right if valid is None else right & valid[:, None]) / out.shape[1]
    return xp.zeros((), dtype=out.dtype)


def backward_grad(net: Network, params: Params, cache: Cache, dz: Array, *, rows: Any = None,
                  key: Key | None = None) -> Grads:
    """The default gradient function: the hand-written backward pass from ``dz``,
    ``funcnn.backward(net, params, cache, y, dz=dz)``. ``rows`` and ``key`` are not
    needed: ``dz`` already holds the ``1 / rows`` of the mean."""
    return backward(net, params, cache, None, dz=dz)


def _output_terms(net: Network, cache: Cache, y: Any, tail: int, in_tail: Any):
    """``(loss, dL/dzs[-1], rows)``: on a padded short batch those of its first ``tail``
    rows, and ``rows = tail``; else of all ``m`` rows, and ``rows = m``.

    Under jax the short batch's terms sit in a ``lax.cond`` branch: computed in the one
    step that needs them (on many devices their slice moves rows, once an epoch)."""
    spec, z, a = get_loss(net.loss), cache.z, cache.out
    m = z.shape[0]

    def full():
        return spec.value(net.output, z, a, y), spec.delta(net.output, z, a, y)

    def head():
        dz = spec.delta(net.output, z[:tail], a[:tail], y[:tail])
        padding = array_namespace(z).zeros((m - tail, z.shape[1]), dz.dtype)
        return (spec.value(net.output, z[:tail], a[:tail], y[:tail]),
                array_namespace(z).concatenate([dz, padding]))

    if not tail:
        return (*full(), m)
    if is_concrete(in_tail):
        return (*head(), tail) if in_tail else (*full(), m)
    return (*sys.modules["jax"].lax.cond(in_tail, head, full),
            array_namespace(z).where(in_tail, tail, m))


def train_step(net: Network, optimizer: Optimizer, params, opt_state, x, y, key, *,
               state: Any = (), grad_fn=backward_grad, tail: int = 0, in_tail: Any = False):
    """One update on a prepared batch, no checks:
    ``(params, opt_state, loss, n_correct, state)``.

    ``key`` draws the dropout masks and is passed to ``grad_fn`` (see the module
    docstring); it is ``None`` only for a net without dropout and a gradient function that
    draws nothing. ``state`` is the model state (``()`` for a net without one); the
    pass runs in training mode, so BatchNorm uses the batch's statistics and the new state
    comes back. ``tail`` (static) and ``in_tail`` (a bool, traced or not) train a padded
    short batch, see the module docstring (never for a net whose rows are coupled).
    """
    m = x.shape[0]
    noise = None
    if net.draws:
        noise = draw_noise(net, key, m, x.dtype, "jax" if is_jax_array(x) else "numpy")
    cache = apply(net, params, x, noise, state=state, train=True)
    loss, dz, rows = _output_terms(net, cache, y, tail, in_tail)
    grads = grad_fn(net, params, cache, dz, rows=rows, key=key)
    params, opt_state = optimizer.update(params, grads, opt_state)
    valid = array_namespace(x).arange(m) < rows if tail else None
    return params, opt_state, loss, n_correct(net, cache.out, y, valid), cache.state


def make_train_step(net: Network, optimizer: Optimizer, *, grad_fn=backward_grad):
    """A pure step ``(params, opt_state, x, y, key=None) -> (params, opt_state, loss)``.

    It checks shapes and dtypes (also while ``jax.jit`` traces it). ``grad_fn`` computes
    the gradient (see the module docstring), e.g. ``funcnn.per_example.dp_grad(1.0, 1.1)``
    for DP-SGD. The step of a net with dropout, or with a gradient function that draws
    noise, needs a ``key`` (a new one each step), as ``forward(train=True)`` does; without
    one it raises ``ValueError``. A net with model state (BatchNorm) takes it as
    ``state=`` and returns the new one last: ``params, opt_state, loss, state = step(params,
    opt_state, x, y, key, state=state)``. Jit it with ``jax.jit(step)``.
    """
    check_net(net)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)

    def step(params, opt_state, x, y, key=None, *, state=None):
        if net.draws and key is None:
            rate = f" ({net.dropout})" if hasattr(net, "dropout") else ""
            raise ValueError(
                f"the net's dropout{rate} needs a key: step(params, opt_state, x, y, key), a "
                "new key each step (e.g. funcnn.random.fold_in(key, step_number))")
        b = prepare(net, params, x, y, state=state, key=key, train=True, draw=False)
        params, opt_state, loss, _, new_state = train_step(
            net, optimizer, params, opt_state, b.x, b.y, key, state=b.state, grad_fn=grad_fn)
        return (params, opt_state, loss) if state is None else (
            params, opt_state, loss, new_state)

    return step


# ---------------------------------------------------------------------------- checks


def check_optimizer(optimizer: Any) -> None:
    """Raise TypeError unless ``optimizer`` is a funcnn ``Optimizer(init, update)``."""
    if type(optimizer).__module__.partition(".")[0] == "optax":
        raise TypeError(
            "fit and make_train_step take a funcnn.optim.Optimizer, whose update is "
            "(params, grads, state) -> (params, state); got an optax "
            f"{type(optimizer).__name__}, whose update is (updates, state, params). Wrap it: "
            "funcnn.optax_adapter.from_optax(tx)"
        )
    if not (isinstance(optimizer, tuple) and len(optimizer) == 2 and all(map(callable, optimizer))):
        raise TypeError(
            "optimizer must be a funcnn.optim.Optimizer(init, update), e.g. "
            f"funcnn.optim.adam(1e-3); got {type(optimizer).__name__}"
        )


def check_grad_fn(grad_fn: Any) -> None:
    """Raise TypeError unless ``grad_fn`` is callable (a gradient function, see ``funcnn.step``)."""
    if not callable(grad_fn):
        raise TypeError(
            "grad_fn must be a gradient function grad_fn(net, params, cache, dz, *, rows, key) "
            "-> grads, e.g. funcnn.step.backward_grad (the default) or "
            f"funcnn.per_example.dp_grad(max_norm); got {type(grad_fn).__name__}"
        )
