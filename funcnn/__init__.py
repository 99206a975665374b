"""funcnn: functional, pure-array neural networks on NumPy and JAX.

Stateless functions over parameter and optimizer-state pytrees, one code path
for ``numpy`` and ``jax.numpy``, and a hand-written backward pass checked
against ``jax.grad`` and finite differences (``funcnn.testing``).

The public names, by what they are for (``ARCHITECTURE.md`` says where each lives):

- the network: ``MLP`` (a stack of dense layers) and ``Net`` (any stack of
  ``funcnn.layers``), ``Dense``, ``Cache``, ``init_params``, ``init_state`` (model state:
  BatchNorm's running statistics), ``forward``, ``predict``, ``loss``, ``backprop``,
  ``value_and_grad``, and the check-free ``apply`` / ``backward`` a jitted loop calls;
- per-example gradients: ``per_example_grads``, ``per_example_grad_norms``
  (more in ``funcnn.per_example``: DP-SGD clipping);
- optimizers: ``Optimizer`` and the free functions ``sgd_*``, ``adam_*``, ``adamw_update``
  (AdamW's state is Adam's: ``adam_init``), ``rmsprop_*``, ``adagrad_*`` with their typed
  states, ``clip_by_global_norm`` (factories in ``funcnn.optim``, learning-rate schedules
  in ``funcnn.schedules``);
- training: ``make_train_step``, ``fit``, ``evaluate``, ``batches``, ``TrainingDiverged``
  (callbacks for checkpoints, resume and progress in ``funcnn.callbacks``; many devices
  in ``funcnn.parallel``);
- checkpoints: ``save``, ``load``, ``Checkpoint``;
- backends: ``get_backend``, ``to_backend`` (keys in ``funcnn.random``; the process-wide
  switches ``set_backend`` and ``flush_denormals`` in ``funcnn.backend``);
- modules: ``activations``, ``layers``, ``losses``, ``optim``, ``schedules``, ``random``, ``data``,
  ``callbacks``, ``per_example``, ``parallel``, ``testing``.
"""

from funcnn import activations as activations
from funcnn import callbacks as callbacks
from funcnn import data as data
from funcnn import layers as layers
from funcnn import losses as losses
from funcnn import optax_adapter as optax_adapter  # named by fit's error for optax; no optax here
from funcnn import optim as optim
from funcnn import parallel as parallel
from funcnn import per_example as per_example
from funcnn import random as random
from funcnn import schedules as schedules
from funcnn import testing as testing
from funcnn.backend import get_backend as get_backend
from funcnn.backend import to_backend as to_backend
from funcnn.batching import batches as batches
from funcnn.checked import backprop as backprop
from funcnn.checked import forward as forward
from funcnn.checked import loss as loss
from funcnn.checked import predict as predict
from funcnn.checked import value_and_grad as value_and_grad
from funcnn.checkpoint import Checkpoint as Checkpoint
from funcnn.checkpoint import load as load
from funcnn.checkpoint import save as save
from funcnn.mlp import MLP as MLP
from funcnn.mlp import Dense as Dense
from funcnn.network import Cache as Cache
from funcnn.network import Net as Net
from funcnn.network import apply as apply
from funcnn.network import backward as backward
from funcnn.network import init_params as init_params
from funcnn.network import init_state as init_state
from funcnn.optim import AdagradState as AdagradState
from funcnn.optim import AdamState as AdamState
from funcnn.optim import Optimizer as Optimizer
from funcnn.optim import RMSPropState as RMSPropState
from funcnn.optim import SGDState as SGDState
from funcnn.optim import adagrad_init as adagrad_init
from funcnn.optim import adagrad_update as adagrad_update
from funcnn.optim import adam_init as adam_init
from funcnn.optim import adam_update as adam_update
from funcnn.optim import adamw_update as adamw_update
from funcnn.optim import clip_by_global_norm as clip_by_global_norm
from funcnn.optim import rmsprop_init as rmsprop_init
from funcnn.optim import rmsprop_update as rmsprop_update
from funcnn.optim import sgd_init as sgd_init
from funcnn.optim import sgd_update as sgd_update
from funcnn.per_example import per_example_grad_norms as per_example_grad_norms
from funcnn.per_example import per_example_grads as per_example_grads
from funcnn.step import make_train_step as make_train_step
from funcnn.train import TrainingDiverged as TrainingDiverged
from funcnn.train import evaluate as evaluate
from funcnn.train import fit as fit

__version__ = "0.1.0"

__all__ = [
    # the network
    "MLP",
    "Net",
    "Cache",
    "Dense",
    "apply",
    "backprop",
    "backward",
    "forward",
    "init_params",
    "init_state",
    "loss",
    "predict",
    "value_and_grad",
    # per-example gradients
    "per_example_grad_norms",
    "per_example_grads",
    # optimizers
    "AdagradState",
    "AdamState",
    "Optimizer",
    "RMSPropState",
    "SGDState",
    "adagrad_init",
    "adagrad_update",
    "adam_init",
    "adam_update",
    "adamw_update",
    "clip_by_global_norm",
    "rmsprop_init",
    "rmsprop_update",
    "sgd_init",
    "sgd_update",
    # training
    "TrainingDiverged",
    "batches",
    "evaluate",
    "fit",
    "make_train_step",
    # checkpoints
    "Checkpoint",
    "load",
    "save",
    # backends
    "get_backend",
    "to_backend",
    # modules
    "activations",
    "callbacks",
    "data",
    "layers",
    "losses",
    "optim",
    "parallel",
    "per_example",
    "random",
    "schedules",
    "testing",
]

# Names that left the top level, and where they went (module __getattr__: an old name fails
# with this message instead of living on as an alias).
_MOVED = {
    "set_backend": "funcnn.set_backend moved to funcnn.backend.set_backend (a process-wide "
                   "default; passing backend= to the function that creates arrays needs none)",
    "flush_denormals": "funcnn.flush_denormals moved to funcnn.backend.flush_denormals (fit "
                       "applies it to its NumPy epochs; a loop of your own can too)",
    "adamw_init": "funcnn.adamw_init was removed: AdamW's state is Adam's, use funcnn.adam_init",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(_MOVED[name])
    raise AttributeError(f"module 'funcnn' has no attribute {name!r}")
