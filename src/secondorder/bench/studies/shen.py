"""[Shen]'s study: complex-step stochastic Newton-Krylov against first- and second-order
methods (Fig. 3), its supplementary ablations, Fig. 2 and the derivative-cost claims.

Shen, Shao, Zhou, Jiang, Luo, Yang, "Second-order Neural Network Training Using
Complex-step Directional Derivative". The paper's method is
:class:`~secondorder.optim.NewtonKrylov` with ``backend="complex-step"`` (products by the
complex step, eq. 10-11); the same optimizer with the autograd backend runs beside it
(the same algorithm: its iterates agree to rounding for a few steps and then drift through
the discrete decisions of screening and step sizing; its cost differs).

Parts (problems from :mod:`~secondorder.bench.studies.shen_problems`):

- ``linear`` (Fig. 3, LR and SVM): full batch and mini-batches of 128 and 1024;
- ``dnn`` (Fig. 3, DNNs): deep autoencoder, LeNet-5 (sigmoid), VGG-11 (BN + ELU, reduced
  width), mini-batch 128;
- the supplementary ablations on LeNet-5: ``fd`` (forward finite differences with
  ``h = 1e-2 .. 1e-16`` inside training vs the complex step, first iterations), ``eta``
  (Taylor ratio ``eta~``), ``sizing`` (Taylor ratio vs Armijo backtracking, Table 1, and
  the per-epoch time statistic), ``batch`` (batch sizes), ``activation`` (none / ReLU /
  sigmoid / sin without batch norm, against Adam), ``termination`` (early termination on
  negative curvature on / off, and Alg. 1's printed warm start, CG step and post-screening
  beside ours, on sigmoid LeNet-5 and on a sin LeNet-5 that learns at the study's budget).

Other methods' learning rates are tried from 1e-1 to 1e-4 and the best final validation
metric kept (the benchmark's selection rule; the paper keeps "the best result"). Shampoo
comes from the optional extra ``shampoo`` (pytorch-optimizer); without it the study leaves
it out and says so.
"""

from __future__ import annotations

import math
import statistics

from secondorder.bench.registry import REGISTRY
from secondorder.bench.studies import shen_problems  # noqa: F401 -- adds the builders
from secondorder.bench.studies.metrics import METRICS, failed_runs_note, format_number
from secondorder.bench.studies.plots import curves
from secondorder.bench.studies.shen_plots import cg_energy_figure, derivative_cost_figure
from secondorder.bench.studies.spec import (
    Column,
    Figure,
    MethodSpec,
    Part,
    ProblemSpec,
    Row,
    Study,
    Table,
)

__all__ = ["build", "shampoo_available"]

#: Learning rates of the other methods ([Shen] Sec. 5: 1e-1 to 1e-4, best kept); quick: one.
LR_GRID = ((1e-1, 1e-2, 1e-3, 1e-4), (1e-2,))
#: Hessian-free damping grid (its knob; it has no learning rate).
HF_GRID = ((1e-2, 1.0), ())
#: Epochs per part (default, quick).
#: fd: 12 epochs of 8 batches (1000 samples, batch 128) give the paper's first ~100 iterations.
EPOCHS = {"linear": (10, 1), "dnn": (3, 1), "fd": (12, 1), "eta": (3, 1), "sizing": (10, 2),
          "batch": (2, 1), "activation": (3, 1), "termination": (3, 1)}
#: Training samples under --quick (smaller than the other studies': eight parts).
QUICK_TRAIN = 160
#: Training samples of the DNN and ablation parts in the default run: Alg. 1 takes the
#: global gradient (and every step-size trial's loss) over the whole training split, about
#: 7 s per step on the 7000-sample MNIST stand-in here (benchmarks/shen_costs.py), which
#: would not fit 30 minutes; 1000 samples keep about 1 s per step.
DEFAULT_TRAIN = 1000
#: [Shen] supplementary: finite-difference steps and Taylor ratios tried.
FD_STEPS = (1e-2, 1e-4, 1e-6, 1e-8, 1e-16)
ETAS = ((0.001, 0.01, 0.05, 0.1, 0.2, 0.5), (0.001, 0.05, 0.5))
BATCHES = ((32, 128, 512), (16, 32))
#: Mini-batch of the DNN parts (the paper's 128; --quick: 32, as the complex-step
#: curvature's cost grows with the batch).
DNN_BATCH = (128, 32)
#: Second LeNet-5 of the 'termination' part: sigmoid LeNet-5 (the paper's) stays on the
#: class-prior plateau for every variant at this budget; sin without batch norm learns.
TERMINATION_ACTIVATION = "sin"
#: Armijo backtracking needs more attempts than the Taylor ratio's 10 (0.8^50 = 1.4e-5).
ARMIJO_MAX_ADJUST = 50


def shampoo_available() -> str | None:
    """``None`` if pytorch-optimizer's Shampoo imports, else why not."""
    return REGISTRY["Shampoo"].unavailable_reason()


#: Krylov iterations per batch under --quick (the default run keeps the optimizer's 20).
QUICK_KRYLOV = 4


def _nk(label: str, quick: bool = False, **hyper) -> MethodSpec:
    extra = {"max_cg_iter": QUICK_KRYLOV} if quick else {}
    return MethodSpec(label, "NewtonKrylov", {"taylor_ratio": 0.05, **extra, **hyper})


NK_CS = "Newton-Krylov (complex step)"
PRINTED_STEP = "CG step ||r|| / kappa (line 21 as printed)"
PRINTED_SCREEN = "post-screening rescaling (line 30 as printed)"
NK_AD = "Newton-Krylov (autograd)"
#: The columns of the Fig. 3 rank tables.
RANK_COLUMNS = (Column("Rank (final train loss)", "shen_rank", 0.0),
                Column("Final train loss", "train_loss"), Column("Outcome", "status"))


# --------------------------------------------------------------------------- metrics
def _attempts_at(epoch: int):
    """Average step-size attempts per sized iteration during ``epoch`` (1-based; the last
    recorded epoch when the run is shorter, said in the cell)."""

    def metric(results, part, problem, method):
        recs = results.runs(part, problem, method)
        if not recs:
            return None, "not run"
        vals, used = [], []
        for r in recs:
            ms = [m for m in r.measurements if m.get("optimizer_counters")]
            by_epoch = {round(m["data_epoch"]): m["optimizer_counters"] for m in ms}
            last = max(by_epoch) if by_epoch else 0
            e = min(epoch, last)
            if e < 1:
                continue
            a, b = by_epoch.get(e - 1, {}), by_epoch[e]
            n = b.get("sizings", 0) - a.get("sizings", 0)
            if n > 0:
                vals.append((b["step_attempts"] - a.get("step_attempts", 0)) / n)
                used.append(e)
        if not vals:
            return None, "-" + failed_runs_note(recs)
        mean = statistics.fmean(vals)
        note = "" if all(e == epoch for e in used) else f" (epoch {max(used)})"
        return mean, f"{mean:.1f}{note}" + failed_runs_note(recs)

    return metric


def _global_share(results, part, problem, method):
    """Share of the optimizer's time spent on the global gradient (Alg. 1 lines 1, 48)."""
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    c = recs[0].last.get("optimizer_counters") or {}
    total = sum(c.get(k, 0.0) for k in ("global_seconds", "krylov_seconds", "sizing_seconds"))
    if not total:
        return None, "-"
    share = 100.0 * c["global_seconds"] / total
    return share, f"{share:.1f}%"


def _rank(results, part, problem, method):
    """Rank of the method's final training loss among the part's methods (1 = lowest);
    diverged and failed runs rank last."""
    losses = {}
    for m in results.study.part(part).methods:
        recs = results.runs(part, problem, m.label)
        if not recs:
            continue
        v = recs[0].last.get("train_loss") if recs[0].status == "finished" else None
        losses[m.label] = v if v is not None and math.isfinite(v) else math.inf
    if method not in losses:
        return None, "not run"
    rank = 1 + sum(1 for v in losses.values() if v < losses[method])
    return float(rank), f"{rank} of {len(losses)} ({format_number(losses[method])})"


def _counter(key: str):
    """Final value of the optimizer's counter ``key`` (:class:`NewtonKrylovCounter`: ``hvps``
    Hessian-vector products, ``sizings`` steps taken), mean +- sd over seeds."""

    def metric(results, part, problem, method):
        recs = results.runs(part, problem, method)
        if not recs:
            return None, "not run"
        vals = [float((r.last.get("optimizer_counters") or {}).get(key, math.nan))
                for r in recs]
        vals = [v for v in vals if math.isfinite(v)]
        if not vals:
            return None, "-" + failed_runs_note(recs)
        mean = statistics.fmean(vals)
        text = f"{mean:.0f}" if len(vals) == 1 else (
            f"{mean:.0f} ± {statistics.stdev(vals):.0f}")
        return mean, text + failed_runs_note(recs)

    return metric


METRICS.update({
    "shen_hvps": _counter("hvps"),
    "shen_sizings": _counter("sizings"),
    "shen_attempts_epoch1": _attempts_at(1),
    "shen_attempts_epoch10": _attempts_at(10),
    "shen_global_share": _global_share,
    "shen_rank": _rank,
})


# --------------------------------------------------------------------------- declaration
def _others(q: int, *, linear: bool) -> tuple[MethodSpec, ...]:
    methods = [MethodSpec("Adam", "adam", grid=LR_GRID[q]),
               MethodSpec("Adagrad", "adagrad", grid=LR_GRID[q])]
    if shampoo_available() is None:
        methods.append(MethodSpec("Shampoo", "Shampoo", grid=LR_GRID[q]))
    methods.append(MethodSpec("Hessian-free", "HessianFree", grid=HF_GRID[q]))
    if linear:  # [Shen] Sec. 5: L-BFGS "does not work for stochastic training": LR/SVM only
        methods += [MethodSpec("L-BFGS", "LBFGS", {"lr": 1.0}),
                    MethodSpec("LSCG", "LSCG", {"lr": 1.0})]
    return tuple(methods)


def build(quick: bool = False, seeds: int | None = None) -> Study:
    """The study; ``quick`` shrinks epochs, data and grids, ``seeds`` sets the repetitions."""
    q = 1 if quick else 0
    n_seeds = seeds if seeds is not None else 1
    small = {"max_train": QUICK_TRAIN} if quick else {}
    mb = DNN_BATCH[q]
    sub = {"max_train": QUICK_TRAIN if quick else DEFAULT_TRAIN}
    dnn = {"batch_size": mb, **sub}
    nk = (_nk(NK_CS, quick, backend="complex-step"), _nk(NK_AD, quick, backend="autograd"))

    def part(name, title, problems, methods, evals=1):
        return Part(name, title, "epochs", tuple(problems), tuple(methods),
                    {"epochs": EPOCHS[name][q]}, seeds=n_seeds, evals_per_epoch=evals)

    batches = ("full", 128) if quick else ("full", 128, 1024)
    linear_problems = [
        ProblemSpec(f"{kind}_{b}", f"shen_{kind}", 0 if b == "full" else b,
                    options={"batch_size": b, **small})
        for kind in ("logistic", "svm") for b in batches]
    dnn_problems = [
        ProblemSpec("autoencoder", "shen_autoencoder", mb, options=dnn),
        ProblemSpec("lenet5", "shen_lenet", mb, options=dnn),
        ProblemSpec("vgg11_reduced", "shen_vgg", mb,
                    options={"width_divisor": 16 if quick else 8, **dnn}),
    ]
    lenet = ProblemSpec("lenet5", "shen_lenet", mb, options=dnn)
    #: Where Newton-Krylov leaves the class-prior plateau at this budget (the default run's
    #: 'activation' part: sin 0.227, none 0.425, sigmoid 2.299), so the variants separate.
    lenet_learns = ProblemSpec(f"lenet5_{TERMINATION_ACTIVATION}", "shen_lenet", mb,
                               options={"activation": TERMINATION_ACTIVATION, **dnn})
    parts = [
        part("linear", "Fig. 3, LR and SVM", linear_problems, nk + _others(q, linear=True),
             evals=1 if quick else 4),
        part("dnn", "Fig. 3, DNNs", dnn_problems, nk + _others(q, linear=False),
             evals=1 if quick else 4),
        part("fd", "supplementary Fig. 1, finite differences vs complex step", [lenet],
             (nk[0], *(_nk(f"FFD h = {h:g}", quick, backend="finite-difference", fd_step=h)
                       for h in FD_STEPS)), evals=1000),
        part("eta", "supplementary Fig. 2, Taylor ratio", [lenet],
             [_nk(f"eta~ = {e:g}", quick, backend="complex-step", taylor_ratio=e)
              for e in ETAS[q]],
             evals=1 if quick else 4),
        part("sizing", "supplementary Fig. 3 and Table 1, Taylor ratio vs Armijo", [lenet],
             (_nk("Taylor ratio (ours)", quick, backend="complex-step"),
              _nk("Armijo backtracking", quick, backend="complex-step", step_sizing="armijo",
                  armijo_c=0.01, armijo_tau=0.8, max_step_adjust=ARMIJO_MAX_ADJUST)),
             evals=1),
        part("batch", "supplementary Fig. 4, batch sizes",
             [ProblemSpec(f"lenet5_b{b}", "shen_lenet", b, options={"batch_size": b, **sub})
              for b in BATCHES[q]], (nk[0],), evals=8),
        part("activation", "supplementary Fig. 5, activations without batch norm",
             [ProblemSpec(f"lenet5_{a}", "shen_lenet", mb, options={"activation": a, **dnn})
              for a in shen_problems.ACTIVATIONS],
             (nk[0], MethodSpec("Adam", "adam", grid=LR_GRID[q])), evals=1 if quick else 4),
        part("termination", "supplementary 'Early termination'; warm start",
             [lenet, lenet_learns],
             (nk[0], _nk("no early termination", quick, backend="complex-step",
                         early_termination=False),
              _nk("warm start 1.0 (Alg. 1 line 10 as printed)", quick, backend="complex-step",
                  warm_start=1.0),
              _nk(PRINTED_STEP, quick, backend="complex-step", printed_cg_step=True),
              _nk(PRINTED_SCREEN, quick, backend="complex-step", printed_post_screen=True)),
             evals=1 if quick else 4),
    ]
    return Study("shen", "[Shen]", "Second-order Neural Network Training Using Complex-step "
                 "Directional Derivative", tuple(parts), _tables(quick),
                 _figures(quick, linear_problems, dnn_problems), notes=_notes(quick))


def _tables(quick: bool) -> tuple[Table, ...]:
    fig3_rows = []
    for prob in ("logistic_full", "logistic_128", "svm_full", "svm_128"):
        fig3_rows.append(Row(f"{prob}: {NK_CS}", prob, NK_CS, ("1", "-", "-")))
    fig3_rows.append(Row(f"logistic_128: {NK_AD}", "logistic_128", NK_AD, ("1", "-", "-")))
    fig3 = Table(
        "Fig. 3 (LR, SVM): rank", "[Shen] Sec. 5: 'our method outperforms all the competing "
        "methods in all the experiments by a noticeable margin'. Rank of the final training "
        "loss among the part's methods (1 = lowest; diverged or failed rank last), the "
        "selected learning rate of the others, and the outcome.", "linear",
        RANK_COLUMNS, tuple(fig3_rows),
        note="Our batch sizes are separate rows of the figure (the paper keeps the best of "
        "full / 128 / 1024 per method).")
    dnn_rows = [Row(f"{p}: {NK_CS}", p, NK_CS, ("1", "-", "-"))
                for p in ("autoencoder", "lenet5", "vgg11_reduced")]
    dnn_rows += [Row(f"{p}: {NK_AD}", p, NK_AD, ("1", "-", "-"))
                 for p in ("autoencoder", "lenet5", "vgg11_reduced")]
    dnn_rows += [Row("autoencoder: Adam", "autoencoder", "Adam", ("-", "-", "-")),
                 Row("autoencoder: Hessian-free", "autoencoder", "Hessian-free",
                     ("-", "-", "-"))]
    fig3_dnn = Table(
        "Fig. 3 (DNNs): rank", "[Shen] Fig. 3, deep autoencoder, LeNet-5 (sigmoid), VGG-11 "
        "(BN + ELU; ours at reduced width), mini-batch 128. The paper reports Shampoo's "
        "SVD failing on the autoencoder; ours is in the outcome column when the 'shampoo' "
        "extra is installed.", "dnn",
        RANK_COLUMNS, tuple(dnn_rows),
        note="The paper's curves run for many epochs on the full data sets; ours are "
        "short, on stand-in data, so a rank says which method is ahead at our budget.")
    t1 = Table(
        "Supplementary Table 1", "[Shen] supplementary Table 1: average number of attempts "
        "of step-size adjustment per iteration, at the 1st and the 10th epoch (the paper's "
        "rows are our columns). Ours: loss evaluations of the step sizing per sized "
        "iteration" + (" (quick: the last epoch stands in for the 10th)" if quick else "")
        + ".", "sizing",
        (Column("Epoch 1", "shen_attempts_epoch1", 1.0),
         Column("Epoch 10", "shen_attempts_epoch10", 1.0)),
        (Row("Line search (Armijo c = 0.01, tau = 0.8)", "lenet5", "Armijo backtracking",
             ("9.3", "16.7")),
         Row("Our method (Taylor ratio, eta~ = 0.05)", "lenet5", "Taylor ratio (ours)",
             ("5.7", "5.1"))),
        note="Attempts depend on the loss landscape the run reaches (data, epochs); the "
        "claim compared is the direction: the Taylor ratio needs fewer attempts, and the "
        "gap grows with training.")
    time_stat = Table(
        "Time statistic", "[Shen] supplementary 'Time statistic': about 680 s per LeNet-5 "
        "epoch on MNIST (CuPy, GPU), 89.8% of it on the global gradient. Ours: training "
        "seconds per epoch and the global gradient's share of the optimizer's time "
        "(counters of NewtonKrylov: global gradient / batch gradient and Krylov loop / "
        "step sizing).", "sizing",
        (Column("Seconds per epoch", "epoch_time"),
         Column("Global gradient share", "shen_global_share", 10.0)),
        (Row("Newton-Krylov, Taylor ratio", "lenet5", "Taylor ratio (ours)",
             ("680", "89.8%")),
         Row("Newton-Krylov, Armijo", "lenet5", "Armijo backtracking", ("-", "-"))),
        note="Our global gradient runs on the whole (stand-in) training split once per "
        "accepted step, and the step sizing evaluates the global loss at every attempt: "
        "the share depends on the training-set size over the batch size.")
    variants = (("early termination (Alg. 1)", NK_CS, ("-",) * 4),
                ("no early termination", "no early termination", ("flat",) + ("-",) * 3),
                ("warm start 1.0", "warm start 1.0 (Alg. 1 line 10 as printed)", ("-",) * 4),
                ("printed CG step", PRINTED_STEP, ("-",) * 4),
                ("printed post-screening", PRINTED_SCREEN, ("-",) * 4))
    sin = f"lenet5_{TERMINATION_ACTIVATION}"
    term = Table(
        "Early termination", "[Shen] supplementary: 'Without this condition, our method "
        "does not converge - the loss curve is simply flat.' Final training loss with and "
        "without early termination, and our three documented departures from Alg. 1 run "
        "as printed: the warm start (ours starts the Krylov loop at zero), the CG step "
        "||r|| / kappa (ours ||r||^2 / kappa) and the post-screening rescaling (ours "
        "reflects the component along g). Cost: Hessian-vector products, steps taken "
        "(batches past the pre-batch screening) and training seconds. Two LeNet-5s: "
        f"sigmoid (the paper's) and {TERMINATION_ACTIVATION} without batch norm (where "
        "Newton-Krylov leaves the class-prior plateau at our budget).", "termination",
        (Column("Final train loss", "train_loss"), Column("Hessian-vector products",
                                                          "shen_hvps"),
         Column("Steps taken", "shen_sizings"), Column("Training seconds", "runtime")),
        tuple(Row(f"{prob}: {label}", prob, method, paper)
              for prob in ("lenet5", sin) for label, method, paper in variants),
        note="No number in the paper; compare each row with the first row of its LeNet-5.")
    return (fig3, fig3_dnn, t1, time_stat, term)


def _figures(quick: bool, linear_problems, dnn_problems) -> tuple[Figure, ...]:
    loss = [("train_loss", "training loss")]
    axes = [("step", "iteration", "iterations"), ("epoch", "epoch (data passes)", "epochs"),
            ("wall_time", "training seconds", "wall-clock")]

    def fig3(part, problems, tag):
        return tuple(
            Figure(f"Fig. 3 ({tag}) against {short}",
                   f"[Shen] Fig. 3 redrawn ({tag}): training loss (whole training split) "
                   f"against {xl}, seed 0, selected learning rates.", part,
                   lambda r, p, x=x, xl=xl, probs=tuple(s.name for s in problems):
                   curves(r, part, probs, loss, p, x=x, xlabel=xl, logy=("train_loss",)))
            for x, xl, short in axes)

    def one(name, part, problems, caption, x="step", xl="iteration"):
        return Figure(name, caption, part,
                      lambda r, p: curves(r, part, problems, loss, p, x=x, xlabel=xl,
                                          logy=("train_loss",)))

    return (
        *fig3("linear", linear_problems, "LR, SVM"),
        *fig3("dnn", dnn_problems, "DNNs"),
        Figure("Fig. 2", "[Shen] Fig. 2 redrawn: quadratic energy E_Q (eq. 12) and relative "
               "residual along CG iterations on H_B dw = -g (LeNet-5 at initialization, g "
               f"over the training split, H_B on one batch of {DNN_BATCH[1 if quick else 0]}, "
               "complex-step products, "
               "float64); the dotted line marks the first negative curvature, where Alg. 1 "
               "stops. E_Q decreases while the residual does not.", "sizing",
               lambda r, p: cg_energy_figure(r, "sizing", "lenet5", p,
                                             iterations=8 if quick else 30,
                                             batch=DNN_BATCH[1 if quick else 0])),
        one("Supplementary Fig. 1", "fd", ("lenet5",),
            "[Shen] supplementary Fig. 1 redrawn: forward finite differences with h = "
            "1e-2 .. 1e-16 inside Newton-Krylov vs the complex step; training loss after "
            "every iteration (the paper: per-batch loss, first 100 iterations, VGG-11 on "
            "CIFAR-10; ours LeNet-5)."),
        one("Supplementary Fig. 2", "eta", ("lenet5",),
            "[Shen] supplementary Fig. 2 redrawn: Taylor ratio eta~ from 0.001 to 0.5."),
        one("Supplementary Fig. 3", "sizing", ("lenet5",),
            "[Shen] supplementary Fig. 3 redrawn: Taylor-ratio step sizing vs Armijo "
            "backtracking (c = 0.01, tau = 0.8).", x="epoch", xl="epoch"),
        one("Supplementary Fig. 4", "batch", tuple(f"lenet5_b{b}" for b in BATCHES[1 if quick
                                                                                  else 0]),
            "[Shen] supplementary Fig. 4 redrawn: batch sizes (training loss on the whole "
            "split, not the paper's smoothed per-batch loss)."),
        one("Supplementary Fig. 5", "activation",
            tuple(f"lenet5_{a}" for a in shen_problems.ACTIVATIONS),
            "[Shen] supplementary Fig. 5 redrawn: activations none / ReLU / sigmoid / sin "
            "without batch norm, Newton-Krylov vs Adam."),
        one("Early termination", "termination",
            ("lenet5", f"lenet5_{TERMINATION_ACTIVATION}"),
            "[Shen] supplementary 'Early termination': on, off; and the printed warm start, CG "
            "step and post-screening beside ours."),
        Figure("Derivative cost", "[Shen] Sec. 5: one H p on VGG-19, single-thread CPU: "
               "complex step 58.1 s, PyTorch autograd 73.4 s (ratio 0.79). Ours: seconds of "
               "a complex-step and an autograd H p as multiples of one gradient, VGG-11 and "
               "VGG-19 shapes, 3 x 32 x 32 inputs, batch 8, one thread"
               + (" (quick: 1/16 width)" if quick else " (full width)") + "; the ratio "
               "complex / autograd is printed on the bars.", "sizing",
               lambda r, p: derivative_cost_figure(p, width_divisor=16 if quick else 1,
                                                   batch=2 if quick else 8,
                                                   rounds=1 if quick else 3)),
    )


def _notes(quick: bool) -> tuple[str, ...]:
    notes = [
        "The paper's method is run with complex-step products (backend='complex-step'); "
        "'Newton-Krylov (autograd)' is the same algorithm with autograd products.",
        "Departures of our Alg. 1 (optim/newton_krylov.py): CG step ||r||^2 / kappa "
        "(printed ||r|| / kappa); post-screening reflects the component along g (the "
        "printed rescaling cannot change the sign of dw.g); warm start off. The "
        "'termination' part runs each printed variant beside ours.",
        f"DNN and ablation parts train on {QUICK_TRAIN if quick else DEFAULT_TRAIN} samples "
        "of the training split (Alg. 1's global gradient over the whole split costs about "
        "7 s per step on the 7000-sample MNIST stand-in here); LR and SVM on all of it.",
        "Epochs per part: " + ", ".join(f"{k} {v[1 if quick else 0]}"
                                        for k, v in EPOCHS.items())
        + " (the paper trains far longer; scaled to fit a CPU).",
        "Learning rates of Adam, Adagrad and Shampoo: " + ", ".join(
            f"{v:g}" for v in LR_GRID[1 if quick else 0])
        + "; the best final validation metric kept. Hessian-free: damping grid "
        + (", ".join(f"{v:g}" for v in HF_GRID[0]) if not quick else "its default") + ".",
    ]
    reason = shampoo_available()
    if reason is not None:
        notes.append("Shampoo is not installed (pip install 'secondorder[shampoo]', "
                      f"pytorch-optimizer), so it is left out: {reason}.")
    else:
        notes.append("Shampoo: pytorch-optimizer's Shampoo (Gupta et al. 2018), its "
                     "defaults except the learning rate.")
    if quick:
        notes.append(f"--quick: {QUICK_TRAIN} training samples, mini-batches of "
                     f"{DNN_BATCH[1]} for the DNNs, {QUICK_KRYLOV} Krylov iterations, one "
                     "learning rate, fewer eta~ values and batch sizes, VGG-11 at 1/16 "
                     "width: a smoke test, not a result.")
    return tuple(notes)
