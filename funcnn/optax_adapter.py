"""An optax ``GradientTransformation`` as a funcnn :class:`~funcnn.optim.Optimizer`.

funcnn's optimizers update params directly, ``update(params, grads, state) ->
(params, state)``; optax's transform gradients, ``tx.update(grads, state, params)
-> (updates, state)``, and ``optax.apply_updates`` adds the updates. The adapter
composes the two, so any optax optimizer trains in ``fit`` or a train step::

    import optax
    opt = funcnn.optax_adapter.from_optax(optax.adamw(1e-3))
    params, opt_state, history = funcnn.fit(net, params, opt, x, y, epochs=5,
                                            batch_size=128, key=0)

optax is imported only when an adapted optimizer runs, and is never required by
funcnn. optax computes with jax; on the NumPy backend the adapter turns its
results back into NumPy arrays, so the backend of the params is kept. Their dtype
is kept too: NumPy float64 params need ``jax_enable_x64``, without which optax
would compute (and return) float32, so they are refused (the rule of
:func:`funcnn.backend.check_jax_dtype`).
Checkpointing an optax state needs its NamedTuple classes registered with
:func:`funcnn.checkpoint.register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from funcnn.backend import check_jax_dtypes, is_jax_array
from funcnn.optim import Optimizer
from funcnn.tree import tree_leaves

__all__ = ["from_optax"]


def _on_jax(params: Any) -> bool:
    return any(is_jax_array(leaf) for leaf in tree_leaves(params))


def _check_numpy(**trees: Any) -> None:
    """Refuse NumPy trees that optax, computing with jax, would narrow to 32 bits."""
    for name, tree in trees.items():
        check_jax_dtypes(tree, name, "; or train in float32: funcnn.to_backend(params, "
                         "'numpy', 'float32') (optax computes with jax, also for NumPy params)")


def _like(params: Any, tree: Any) -> Any:
    """``tree`` with NumPy leaves when ``params`` are NumPy (optax always returns jax)."""
    if _on_jax(params):
        return tree
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)


@dataclass(frozen=True)
class _Init:
    """``tx.init``; equal (and hashed alike) for the same ``tx``, so jit caches hit."""

    tx: Any

    def __call__(self, params: Any) -> Any:
        if not _on_jax(params):
            _check_numpy(params=params)
        return _like(params, self.tx.init(params))


@dataclass(frozen=True)
class _Update:
    """``tx.update`` followed by ``optax.apply_updates``."""

    tx: Any

    def __call__(self, params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        import optax

        if not _on_jax(params):
            _check_numpy(params=params, grads=grads)
        updates, state = self.tx.update(grads, state, params)
        return _like(params, optax.apply_updates(params, updates)), _like(params, state)


def from_optax(tx: Any) -> Optimizer:
    """The funcnn ``Optimizer(init, update)`` that applies the optax transformation ``tx``.

    Two adapters of the same ``tx`` object compare equal, so ``fit`` on jax compiles once.
    """
    if not (isinstance(tx, tuple) and callable(getattr(tx, "init", None))
            and callable(getattr(tx, "update", None))):
        raise TypeError(
            "from_optax expects an optax GradientTransformation (with init and update), e.g. "
            f"optax.adam(1e-3); got {type(tx).__name__}"
        )
    return Optimizer(_Init(tx), _Update(tx))
