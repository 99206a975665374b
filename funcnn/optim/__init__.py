"""Optimizers as pure functions over parameter pytrees.

Each optimizer has a typed NamedTuple state with the step ``count`` inside and two
free functions, e.g.::

    state = adam_init(params)
    params, state = adam_update(params, grads, state, lr=1e-3)

and a factory that takes the same hyperparameters, checks them the same way, and returns
an :class:`Optimizer` ``(init, update)`` for composing loops::

    opt = funcnn.optim.adam(lr=1e-3)
    state = opt.init(params)
    params, state = opt.update(params, grads, state)

Each update is one small function per leaf that reads as its formula (in the update's
docstring). With numba installed (``funcnn[fast]``) a NumPy leaf runs the same update as
one compiled loop (``funcnn._fused.optimizer_leaf``, tested equal in
``tests/test_fused.py``; ``FUNCNN_FUSED=0`` turns it off); jax leaves always run these.
``lr`` is a positive number or a schedule ``lr(count)`` (see ``funcnn.schedules``);
``momentum``, ``b1``, ``b2`` and ``decay`` lie in [0, 1); ``eps``, ``weight_decay`` and
``initial_accumulator`` are >= 0. Values are checked when concrete
(a jax tracer is not). Nothing is mutated: updates return new trees. Scalars are cast to
each leaf's dtype, so float32 parameters stay float32.

A factory's hyperparameters are plain data: ``opt.update`` is
``functools.partial(adam_update, lr=1e-3, b1=0.9, ...)``. :func:`split_hyper` takes the
numbers out of it (and :func:`merge_hyper` puts them back), so that a compiled loop such
as ``fit``'s takes them as traced arguments: optimizers built alike share one program, and
a new learning rate does not compile a new one. The free functions take arrays and
tracers as they are (e.g. a learning rate passed as an argument of a jitted function).

Conventions, where libraries differ: SGD, RMSProp and Adagrad follow PyTorch (``eps``
outside the square root); RMSProp's default ``decay=0.9`` is optax's; see each update.
"""

from funcnn.optim._adagrad import AdagradState as AdagradState
from funcnn.optim._adagrad import adagrad as adagrad
from funcnn.optim._adagrad import adagrad_init as adagrad_init
from funcnn.optim._adagrad import adagrad_update as adagrad_update
from funcnn.optim._adam import AdamState as AdamState
from funcnn.optim._adam import adam as adam
from funcnn.optim._adam import adam_init as adam_init
from funcnn.optim._adam import adam_update as adam_update
from funcnn.optim._adam import adamw as adamw
from funcnn.optim._adam import adamw_update as adamw_update
from funcnn.optim._adam import weights_only as weights_only
from funcnn.optim._base import Optimizer as Optimizer
from funcnn.optim._base import merge_hyper as merge_hyper
from funcnn.optim._base import split_hyper as split_hyper
from funcnn.optim._clipping import clip_by_global_norm as clip_by_global_norm
from funcnn.optim._clipping import global_norm as global_norm
from funcnn.optim._clipping import with_clipping as with_clipping
from funcnn.optim._rmsprop import RMSPropState as RMSPropState
from funcnn.optim._rmsprop import rmsprop as rmsprop
from funcnn.optim._rmsprop import rmsprop_init as rmsprop_init
from funcnn.optim._rmsprop import rmsprop_update as rmsprop_update
from funcnn.optim._sgd import SGDState as SGDState
from funcnn.optim._sgd import sgd as sgd
from funcnn.optim._sgd import sgd_init as sgd_init
from funcnn.optim._sgd import sgd_update as sgd_update

__all__ = [
    "AdagradState",
    "AdamState",
    "Optimizer",
    "RMSPropState",
    "SGDState",
    "adagrad",
    "adagrad_init",
    "adagrad_update",
    "adam",
    "adam_init",
    "adam_update",
    "adamw",
    "adamw_update",
    "clip_by_global_norm",
    "global_norm",
    "merge_hyper",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "sgd",
    "sgd_init",
    "sgd_update",
    "split_hyper",
    "weights_only",
    "with_clipping",
]


def __getattr__(name: str):
    if name == "adamw_init":  # removed, not aliased: say where the state comes from
        raise AttributeError("funcnn.optim.adamw_init was removed: AdamW's state is Adam's, "
                             "use funcnn.optim.adam_init")
    raise AttributeError(f"module 'funcnn.optim' has no attribute {name!r}")
