"""Check hand-written gradients against autodiff or finite differences.

Point it at funcnn's backward pass or at your own::

    report = funcnn.testing.check_grads(net, params, x, y)            # jax.grad as referee
    report = funcnn.testing.check_grads(net, params, x, y, reference="finite_differences")
    report = funcnn.testing.check_grads(net, params, x, y, grad_fn=my_backprop)

Each leaf is compared by its relative error ``max|g - r| / max|r|`` (against
``max|g|`` when the reference leaf is all zeros, and 0 when both are); a leaf
beyond ``rtol`` raises :class:`GradientMismatch` naming the leaf (for example
``params[0].W``) and by how much it is off. The check runs in float64 (with
``jax_enable_x64`` on when the jax reference is used). Without jax installed, the
jax reference falls back to finite differences, with a warning.

Finite differences cannot see a derivative at a kink (ReLU at 0): an element whose
``+-eps`` perturbation moves a pre-activation of a kinked activation across 0 is
skipped, and the report counts it (``LeafReport.skipped``), instead of failing.
"""

from funcnn.testing._grads import KINKED as KINKED
from funcnn.testing._grads import check_gradient as check_gradient
from funcnn.testing._grads import check_grads as check_grads
from funcnn.testing._grads import finite_difference_grads as finite_difference_grads
from funcnn.testing._layers import check_layer as check_layer
from funcnn.testing._optimizers import check_optimizer as check_optimizer
from funcnn.testing._pieces import PointReport as PointReport
from funcnn.testing._pieces import check_activation as check_activation
from funcnn.testing._pieces import check_loss as check_loss
from funcnn.testing._reports import GradientMismatch as GradientMismatch
from funcnn.testing._reports import LeafReport as LeafReport

__all__ = [
    "KINKED",
    "GradientMismatch",
    "LeafReport",
    "PointReport",
    "check_activation",
    "check_gradient",
    "check_grads",
    "check_layer",
    "check_loss",
    "check_optimizer",
    "finite_difference_grads",
]
