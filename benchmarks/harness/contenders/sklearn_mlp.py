"""``sklearn``: scikit-learn's ``MLPClassifier``, one ``partial_fit`` per epoch."""

from __future__ import annotations

import warnings

import numpy as np

from ..config import B1, B2, EPS, Config, Contender
from ..data import nbytes

__all__ = ["build_sklearn"]


def build_sklearn(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """``MLPClassifier`` with the same net, optimizer and batch size, no weight decay; it
    shuffles and batches by itself (the short last batch included)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xs = np.ascontiguousarray(x, dtype=cfg.dtype)
    classes = np.arange(cfg.sizes[-1])
    clf = MLPClassifier(
        hidden_layer_sizes=cfg.sizes[1:-1],
        activation=cfg.activation,
        solver=cfg.optimizer,
        momentum=0.0,  # used by solver="sgd" only: plain SGD
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=cfg.batch_size,
        learning_rate_init=cfg.lr,
        beta_1=B1,
        beta_2=B2,
        epsilon=EPS,
        max_iter=1,
        shuffle=True,
        tol=0.0,
        n_iter_no_change=10**9,
        random_state=cfg.seed,
    )

    def epoch(_: int) -> float:
        # one partial_fit call is one pass over the data, shuffled by sklearn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(xs, y, classes=classes)
        return float(clf.loss_)

    def dtype_after_fit() -> str:
        return clf.coefs_[0].dtype.name if hasattr(clf, "coefs_") else "?"

    steps = -(-cfg.samples // cfg.batch_size)
    return Contender(epoch, dtype_after_fit, steps, nbytes(xs, y), "rss", "partial_fit")
