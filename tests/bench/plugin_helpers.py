"""A toy external module for the plug-in tests (the ``isolated`` fixture is in conftest.py)."""

import textwrap

TOY_MODULE = textwrap.dedent('''
    """A user's module: an optimizer and a problem the package does not know."""
    import torch
    import torch.nn.functional as F
    from torch import nn


    class PlainGD(torch.optim.Optimizer):
        """x <- x - lr * scale * grad."""

        def __init__(self, params, lr=0.1, scale=1.0):
            super().__init__(params, {"lr": lr, "scale": scale})

        @torch.no_grad()
        def step(self, closure=None):
            with torch.enable_grad():
                loss = closure()
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"] * g["scale"])
            return loss


    def per_sample_ce(outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")


    def accuracy(outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()


    def make_problem(seed=0, n=64):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 4, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        k = n * 3 // 4
        return {"model": nn.Linear(4, 2), "loss": per_sample_ce, "accuracy": accuracy,
                "train": (x[:k], y[:k]), "validation": (x[k:], y[k:]),
                "batch_size": 16, "epochs": 1}
''')


def write_toy(tmp_path, monkeypatch, name):
    """Write :data:`TOY_MODULE` as ``tmp_path/name.py`` and put ``tmp_path`` on sys.path."""
    (tmp_path / f"{name}.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    return name
