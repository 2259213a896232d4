"""secondorder optimizers inside PyTorch Lightning (the patterns of docs/integrations.md).

* automatic optimization: Lightning passes its own closure (training_step, zero_grad,
  backward; it returns a detached loss) to ``optimizer.step``; ``LBFGS`` reads the ``.grad``
  that closure wrote;
* manual optimization (``self.automatic_optimization = False``): ``training_step`` passes a
  closure that returns the loss, so ``TrustRegion`` and ``NewtonKrylov`` get the graph they
  need for Hessian-vector products.

Each trains a logistic regression on 200 noisy samples (full batch, float64, CPU) to within
1e-4 of scipy's minimum (a stated loss; each run takes well under a few seconds).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

import secondorder.optim as so

pl = pytest.importorskip("lightning.pytorch")

N, D = 200, 5
DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
DOC_BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, 1, generator=g, dtype=torch.float64)
    y = ((x @ w + 2.0 * torch.randn(N, 1, generator=g, dtype=torch.float64)) > 0).double()
    return x, y


def _minimum(x: torch.Tensor, y: torch.Tensor) -> float:
    """The logistic loss's minimum by scipy's BFGS (the oracle the stated loss is set from)."""
    xa = np.hstack([x.numpy(), np.ones((N, 1))])
    yn = y.numpy()[:, 0]

    def f(w):
        z = xa @ w
        return np.mean(np.logaddexp(0, z) - yn * z), xa.T @ (1 / (1 + np.exp(-z)) - yn) / N

    res = scipy.optimize.minimize(f, np.zeros(D + 1), jac=True, method="BFGS",
                                  options={"gtol": 1e-12})
    return float(res.fun)


class AutomaticLBFGS(pl.LightningModule):
    """Automatic optimization: Lightning builds the closure and calls ``optimizer.step``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Linear(D, 1).double()
        self.loss_fn = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def configure_optimizers(self):
        return so.LBFGS(self.parameters(), max_iter=20)


class Manual(pl.LightningModule):
    """Manual optimization: the closure returns the loss and does not call backward."""

    def __init__(self, make_optimizer):
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(1)
        self.net = nn.Linear(D, 1).double()
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()

        def closure():
            return self.loss_fn(self.net(x), y)

        return opt.step(closure)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def _fit(module: pl.LightningModule, epochs: int) -> float:
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=N)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no validation loop", "few DataLoader workers"
        trainer.fit(module, loader)
    with torch.no_grad():
        return float(module.loss_fn(module.net(x), y))


@pytest.mark.parametrize(
    "name, module, epochs",
    [
        ("LBFGS (automatic)", AutomaticLBFGS, 5),
        ("TrustRegion (manual)", lambda: Manual(lambda p: so.TrustRegion(p, norm="spherical")), 20),
        ("NewtonKrylov (manual)", lambda: Manual(lambda p: so.NewtonKrylov(p)), 20),
    ],
)
def test_lightning_trains_to_the_stated_loss(name, module, epochs):
    x, y = _data()
    best = _minimum(x, y)
    m = module()
    with torch.no_grad():
        start = float(m.loss_fn(m.net(x), y))
    final = _fit(m, epochs)
    assert start - best > 0.05, name  # the problem is not solved at the start
    assert final < best + 1e-4, f"{name}: loss {final} vs minimum {best}"


def test_integrations_doc_has_both_patterns():
    assert len(DOC_BLOCKS) == 2
    assert "automatic_optimization = False" in DOC_BLOCKS[1]


@pytest.mark.parametrize("index", range(len(DOC_BLOCKS)))
def test_integrations_doc_example_runs(index):
    """docs/integrations.md's Lightning examples run and reach their stated loss."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(DOC_BLOCKS[index], f"integrations.md[python block {index}]", "exec"), {})
