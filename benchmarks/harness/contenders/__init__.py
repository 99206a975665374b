"""Every contender, by name, in the order a run builds and times them.

Each ``build_*(cfg, x, y)`` returns a :class:`harness.config.Contender`. Setup such as
casting the data or moving it to a device happens there and is not timed; a missing
optional library raises ``ImportError``, which the run reports as a skip. Every contender
except ``sklearn`` and funcnn's ``fit`` (which train the short last batch too) runs
``samples // batch_size`` full batches per epoch, in the same per-epoch permutation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ..config import Config, Contender
from .floors import build_gemm_floor, build_jax_gemm_floor
from .funcnn_fit import build_funcnn_jax_scan, build_funcnn_jax_step
from .funcnn_fused import build_funcnn_numpy_fused, build_funcnn_numpy_pure
from .jax_refs import build_jax_example, build_jax_scan_ref, build_jax_step_ref
from .numpy_naive import build_numpy_naive
from .per_example import PER_EXAMPLE, PER_EXAMPLE_BUILDERS
from .sklearn_mlp import build_sklearn
from .torch_eager import build_torch_eager

__all__ = ["CONTENDERS", "DEFAULT", "PER_EXAMPLE"]

CONTENDERS: dict[str, Callable[[Config, np.ndarray, np.ndarray], Contender]] = {
    "gemm-floor": build_gemm_floor,
    "jax-gemm-floor": build_jax_gemm_floor,
    "numpy-naive": build_numpy_naive,
    "torch-eager": build_torch_eager,
    "torch-eager-ftz": partial(build_torch_eager, flush=True),
    "sklearn": build_sklearn,
    "jax-scan-ref": build_jax_scan_ref,
    "jax-step-ref": build_jax_step_ref,
    "funcnn-numpy": build_funcnn_numpy_pure,  # the pure NumPy path, as without funcnn[fast]
    "funcnn-numpy-fused": build_funcnn_numpy_fused,
    "funcnn-jax-scan": build_funcnn_jax_scan,
    "funcnn-jax-step": build_funcnn_jax_step,
    "jax-example": build_jax_example,
    **PER_EXAMPLE_BUILDERS,
}
DEFAULT = [name for name in CONTENDERS if name not in PER_EXAMPLE]  # the rest on request only
