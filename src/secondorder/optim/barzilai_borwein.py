"""Barzilai-Borwein step sizes: [Filippova]'s SGD-BB (Alg. 3) and deterministic BB1/BB2.

BB approximates the Hessian by ``eta^{-1} I`` with ``eta`` solving
``min_eta |eta^{-1} s - y|^2`` ([Filippova] sec. 2.2; [BarzilaiBorwein1988], ``s`` and ``y``
the last step and gradient change.

``mode="sgd_bb"`` is [Filippova] Alg. 3 (SGD-BB, [Tan2016]: plain SGD steps
``x <- x - eta_k g_B`` inside epoch ``k``, while an exponentially weighted gradient
``g_{k,t+1} = (1 - beta) g_{k,t} + beta g_B`` (``g_{k,0} = 0``) is accumulated. At the start
of epoch ``k >= 2`` the step is set from the two previous epochs' end points,
``s = x_{k-1,T} - x_{k-2,T}``, ``y = g_{k-1,T} - g_{k-2,T}``:
``eta_k = |s|^2 / (T |s^T y|)``, kept if it lies in ``[tau_min, tau_max] / (k + 1)``, else
``tau_0 / (k + 1)``. Epochs 0 and 1 use ``lr``. (The seed prints ``s <- x_{k-1,T} / T -
x_{k-2,T}``; the ``1/T`` belongs to the step, as in [Tan2016]'s SGD-BB, which is what is
implemented.) The epoch boundary is given by ``epoch_length`` (``T``, steps per epoch): the
optimizer counts its steps.

``mode="bb1"`` / ``"bb2"`` are deterministic full-batch gradient methods with
``alpha = s^T s / s^T y`` (BB1) or ``s^T y / y^T y`` (BB2), globalized by the nonmonotone
line search of Grippo, Lampariello & Lucidi against the largest of the last ``memory``
losses ([Raydan1997], from :func:`secondorder.optim.line_search.nonmonotone_backtracking`.
The closure must compute the same function at every call: the line search's loss and
gradient are reused by the next step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim import direction_groups as ds
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.line_objective import (
    LineObjective,
    finite_start,
    is_finite,
    search,
    versions,
)

__all__ = ["BB_MODES", "BarzilaiBorwein", "bb_step", "sgd_bb_step_size"]

BB_MODES = ("sgd_bb", "bb1", "bb2")


def sgd_bb_step_size(
    s: tuple[Tensor, ...],
    y: tuple[Tensor, ...],
    epoch: int,
    epoch_length: int,
    tau_0: float,
    tau_min: float,
    tau_max: float,
) -> float:
    """[Filippova] Alg. 3's step for epoch ``k = epoch``: ``|s|^2 / (T |s^T y|)``, bounded.

    Returns:
        ``eta_k`` if it lies in ``[tau_min/(k+1), tau_max/(k+1)]``, else ``tau_0/(k+1)``.
    """
    eta = float(tl.dot(s, s) / (epoch_length * tl.dot(s, y).abs()))
    lo, hi = tau_min / (epoch + 1), tau_max / (epoch + 1)
    if eta == eta and lo <= eta <= hi:  # (eta == eta: not NaN)
        return eta
    return tau_0 / (epoch + 1)


def bb_step(s: tuple[Tensor, ...], y: tuple[Tensor, ...], mode: str) -> Tensor:
    """The BB1 (``s^T s / s^T y``) or BB2 (``s^T y / y^T y``) step, a 0-dim tensor."""
    sy = tl.dot(s, y)
    if mode == "bb1":
        return tl.dot(s, s) / sy
    return sy / tl.dot(y, y)


class BarzilaiBorwein(ds.SharedHyperparameters, SecondOrderOptimizer):
    """Barzilai-Borwein step sizes (see module doc).

    ``lr`` may differ between param groups: group ``g`` moves by ``eta (lr_g / lr_max)``
    times its part of ``-g`` (see :mod:`secondorder.optim.direction_groups`), where
    ``eta`` is the method's step: ``lr_max`` in epochs 0 and 1 of SGD-BB and at the first
    BB1/BB2 iteration, then the BB step measured on the actual moves (so afterwards only the
    ratios of the ``lr`` matter). Every other hyperparameter must be the same in all groups.
    ``lr`` is read at every step, so LR schedulers act on it.

    Args:
        params: parameters or param groups.
        lr: the step of epochs 0 and 1 (``"sgd_bb"``) or of the first iteration (BB1/BB2).
        mode: ``"sgd_bb"`` ([Filippova] Alg. 3), ``"bb1"`` or ``"bb2"``.
        epoch_length: steps per epoch ``T``, required for ``"sgd_bb"`` (e.g.
            ``len(train_loader)``). It has no default because no value is faithful to
            Alg. 3 without knowing the data: the step is recomputed once per epoch from the
            gradient averaged over the epoch, and ``|s|^2 / (T |s^T y|)`` scales with ``T``
            (a per-step "epoch", ``T = 1``, would average one batch with weight ``beta``
            and inflate the step by ``1 / beta``). Omitting it raises a ``ValueError`` that
            says what to pass. Unused by ``"bb1"`` / ``"bb2"``.
        beta: gradient weighting ``beta`` in ``(0, 1]`` of Alg. 3.
        tau_0: fallback step scale of Alg. 3 (``None``: ``lr``).
        tau_min: lower bound scale of Alg. 3.
        tau_max: upper bound scale of Alg. 3.
        memory: losses remembered by the nonmonotone line search (BB1/BB2; 1 is monotone).
        c1: sufficient-decrease constant of that line search.
        step_bounds: BB1/BB2 steps are clipped to this interval; a step from
            ``s^T y <= 0`` is replaced by the upper bound.
        max_ls_evals: closure calls allowed per line search.

    Raises:
        ValueError: for an invalid value or a shared hyperparameter that differs by group.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        mode: str = "sgd_bb",
        epoch_length: int | None = None,
        beta: float = 0.1,
        tau_0: float | None = None,
        tau_min: float = 1e-6,
        tau_max: float = 10.0,
        memory: int = 10,
        c1: float = 1e-4,
        step_bounds: tuple[float, float] = (1e-10, 1e10),
        max_ls_evals: int = 30,
    ):
        defaults = dict(
            lr=lr, mode=mode, epoch_length=epoch_length, beta=beta,
            tau_0=lr if tau_0 is None else tau_0, tau_min=tau_min, tau_max=tau_max,
            memory=memory, c1=c1, step_bounds=tuple(step_bounds), max_ls_evals=max_ls_evals,
        )  # fmt: skip
        super().__init__(params, defaults)

    HYPERPARAMETERS = {
        **ds.SharedHyperparameters.HYPERPARAMETERS,
        "mode": hyper.one_of(BB_MODES),
        "beta": hyper.in_range(0, 1, "(]"),
        "tau_0": hyper.positive,
        "memory": hyper.integer(1),
    }

    @classmethod
    def check_relations(cls, hp: dict[str, Any]) -> None:
        """``sgd_bb`` needs ``epoch_length``; ``0 <= tau_min <= tau_max``; ``0 < low < high``."""
        super().check_relations(hp)
        if hp["mode"] == "sgd_bb" and hp["epoch_length"] is None:
            raise ValueError(
                "BarzilaiBorwein with mode='sgd_bb' (the default) needs epoch_length, the "
                "number of steps per epoch: pass epoch_length=len(train_loader) (mini-batches "
                "per pass over the training set), or mode='bb1' / mode='bb2' for full-batch "
                "training (no epoch_length)"
            )
        if hp["mode"] == "sgd_bb":
            hyper.integer(1)("epoch_length", hp["epoch_length"])
        tau_min, tau_max = hp["tau_min"], hp["tau_max"]
        hyper.nonnegative("tau_min", tau_min)
        hyper.require(tau_max >= tau_min, "tau_max", tau_max, f">= tau_min ({tau_min})")
        bounds = tuple(hp["step_bounds"])
        hyper.require(0 < bounds[0] < bounds[1], "step_bounds", bounds,
                      "(low, high) with 0 < low < high")

    @property
    def step_size(self) -> float:
        """The step in use: ``eta_k`` of the current epoch (SGD-BB) or the last BB step.

        It applies to the groups with the largest ``lr``; group ``g`` steps
        ``step_size * lr_g / lr_max``.
        """
        st = self.state["global"]
        return float(st.get("eta", ds.GroupScale.of(self).lr))

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One SGD-BB step (mini-batch) or one BB1/BB2 iteration (full batch).

        The closure, the return value and the errors: see
        :class:`~secondorder.optim.direction_groups.SharedHyperparameters`.
        """
        grp = self.shared_hyperparameters()
        if grp["mode"] == "sgd_bb":
            return self._sgd_bb(closure, grp)
        return self._bb(closure, grp)

    def reset_memory(self) -> None:
        """Forget the last step and gradient change, the losses and the epoch averages."""
        for k in ("s", "y", "losses", "g_avg", "ends"):
            self.state["global"].pop(k, None)

    # ------------------------------------------------------------------ [Filippova] Alg. 3
    def _sgd_bb(self, closure: Closure, grp: dict[str, Any]) -> Tensor:
        st = self.state["global"]
        st.setdefault("epoch", 0)
        st.setdefault("t", 0)
        ev = self.evaluate(closure)
        if not ev.is_finite():  # never applied: the step raises NonFiniteLossError, undone
            return ev.loss
        scale = ds.GroupScale.of(self)
        if scale.lr > 0:  # (all lr = 0: nothing moves, not even with a BB step)
            eta = st.get("eta", scale.lr)  # epochs 0 and 1: lr, read at this step
            self.add_to_params(scale.apply(ev.grads), -eta)
        beta = grp["beta"]
        g_avg = st.get("g_avg")
        st["g_avg"] = tl.scale(ev.grads, beta) if g_avg is None else tl.add(
            tl.scale(g_avg, 1 - beta), ev.grads, beta
        )
        st["t"] += 1
        if st["t"] == grp["epoch_length"]:
            ends = (*st.get("ends", ()), (tl.clone(self.params()), st["g_avg"]))[-2:]
            st["ends"] = ends
            st["epoch"] += 1
            st["t"] = 0
            st["g_avg"] = None
            k = st["epoch"]
            if k > 1:
                (x2, g2), (x1, g1) = ends
                st["eta"] = sgd_bb_step_size(
                    tl.sub(x1, x2), tl.sub(g1, g2), k, grp["epoch_length"], grp["tau_0"],
                    grp["tau_min"], grp["tau_max"],
                )
        return ev.loss

    # ------------------------------------------------------------------ BB1 / BB2
    def _bb(self, closure: Closure, grp: dict[str, Any]) -> Tensor:
        st = self.state["global"]
        orig_loss, loss, g = finite_start(self, closure, st, True, self.reset_memory)
        if g is None:
            return orig_loss
        scale = ds.GroupScale.of(self)
        lo, hi = grp["step_bounds"]
        if "s" in st:
            a = bb_step(st["s"], st["y"], grp["mode"])
            alpha = float(a) if bool(a > 0) else hi
            alpha = min(max(alpha, lo), hi)
        else:
            alpha = scale.lr
        st["eta"] = alpha
        losses = (*st.get("losses", ()), float(loss))[-grp["memory"] :]
        st["losses"] = losses
        d = scale.apply(tl.neg(g))  # -diag(lr_g / lr_max) g
        slope = -tl.dot(g, scale.apply(g))
        if scale.lr == 0 or float(slope) == 0.0:
            return orig_loss
        x0 = self.params_at_start()
        phi = LineObjective(self, closure, x0, d)
        t, new_loss, new_g = search(
            phi, "nonmonotone", loss, g, slope, step=alpha, c1=grp["c1"],
            max_evals=grp["max_ls_evals"], need_grad=True, reference_loss=max(losses),
        )  # fmt: skip
        if t == 0.0 or new_g is None or not is_finite(new_loss, new_g):
            self.set_params(x0)
            st.pop("s", None)
            st["cache"] = (loss, g, versions(self.params()))
            return orig_loss
        st["s"] = tl.scale(d, t)
        st["y"] = tl.sub(new_g, g)
        st["cache"] = (new_loss, new_g, versions(self.params()))
        return orig_loss
