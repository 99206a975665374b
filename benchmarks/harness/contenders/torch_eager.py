"""``torch-eager`` and ``torch-eager-ftz``: PyTorch eager, out of the box and with
subnormals flushed to zero."""

from __future__ import annotations

import os

import numpy as np

from ..config import B1, B2, EPS, Config, Contender
from ..data import nbytes, permutation

__all__ = ["build_torch_eager"]


def build_torch_eager(cfg: Config, x: np.ndarray, y: np.ndarray, flush: bool = False
                      ) -> Contender:
    """PyTorch eager, out of the box; with ``flush``, subnormals flushed to zero during its
    epochs (``torch.set_flush_denormal``), as funcnn's fit does on NumPy and XLA on CPU:
    dead ReLU units make Adam's first moments subnormal, which costs torch ~40% here."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    dt = getattr(torch, cfg.dtype)
    layers: list[torch.nn.Module] = []
    for i, (m, n) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(m, n, dtype=dt))
        if i < len(cfg.sizes) - 2:
            layers.append(torch.nn.Tanh() if cfg.activation == "tanh" else torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(B1, B2), eps=EPS)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dt)
    yt = torch.from_numpy(y.astype(np.int64))
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size

    def epoch(i: int) -> float:
        flushing = flush and torch.set_flush_denormal(True)
        try:
            perm = torch.from_numpy(permutation(cfg, i))
            for s in range(steps):
                idx = perm[s * bs : (s + 1) * bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        finally:
            if flushing:
                torch.set_flush_denormal(False)
        return loss.item()

    held = nbytes(xt, yt) + sum(p.nbytes for p in model.parameters())
    note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    note += ", subnormals flushed" if flush else ""
    return Contender(epoch, cfg.dtype, steps, held, "rss", note)
