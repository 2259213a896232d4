"""[AdaptiveNorms] study: declaration, the quadratic and diagonal-mass math, the --quick run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from secondorder.bench.studies import adaptive_norms_figures as F
from secondorder.bench.studies import get_study, run
from secondorder.bench.studies.adaptive_norms import ARC, FIRST, TR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_study_declares_every_norm_on_shared_defaults():
    study = get_study("adaptive_norms")
    part = study.part("headline")
    assert [p.build for p in part.problems] == ["an_mlp", "an_cnn", "an_autoencoder"]
    labels = [m.label for m in part.methods]
    assert labels[0] == "TR spherical"  # the autoencoder's target comes from the first
    assert set(TR) | set(ARC) | set(FIRST) == set(labels)
    for m in part.methods:
        if m.label in TR or m.label in ARC:  # one set of defaults for all three norms
            assert dict(m.hyperparameters) == {} and m.grid == ()
    assert part.seeds == 10 and get_study("adaptive_norms", quick=True).part(
        "headline").seeds == 2


def test_quadratic_steps_lie_on_their_implicit_trust_regions():
    """GD's step has length lr ||g||; Adagrad's step s satisfies s^T A^{1/2} s = r^2 with
    r = lr ||g||_{A^{-1/2}} ([AdaptiveNorms] eqs. 5-6): each iterate is on the boundary of
    the region drawn around the previous one."""
    h = F.QUADRATICS["ill-conditioned, rotated 30 deg (kappa 1e2)"]
    starts = np.array([[-4.0, 3.0]])
    runs = F.quadratic_runs(h, starts, 6)
    for method in ("GD", "Adagrad"):
        _, pts, regions = runs[method]
        for t, (center, axes) in enumerate(regions):
            s = pts[t + 1] - center
            assert np.allclose(center, pts[t])
            if method == "GD":
                assert abs(np.linalg.norm(s) - axes[0]) < 1e-9 * max(1.0, axes[0])
            else:  # axis-aligned ellipse with semi-axes a_i: sum (s_i / a_i)^2 = 1
                assert abs(((s / axes) ** 2).sum() - 1.0) < 1e-9


def test_adagrad_beats_gd_on_the_axis_aligned_ill_conditioned_quadratic():
    starts = np.random.default_rng(0).uniform(-5, 5, size=(30, 2))
    axis = F.quadratic_runs(F.QUADRATICS["ill-conditioned, axis-aligned (kappa 1e2)"],
                            starts, 100)
    gd, ada = axis["GD"][0][:, -1].mean(), axis["Adagrad"][0][:, -1].mean()
    assert ada < gd - 1.0  # at least ten times lower suboptimality on average
    well = F.quadratic_runs(F.QUADRATICS["well-conditioned (kappa 2)"], starts, 100)
    assert well["GD"][0][:, -1].mean() < -10  # GD converges when well conditioned


def test_confidence_band_is_the_student_t_interval():
    vals = np.array([[1.0], [2.0], [3.0], [4.0]])
    mean, lo, hi = F.confidence_band(vals, 0.95)
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t_{0.975, 3}
    assert mean[0] == 2.5 and abs(hi[0] - 2.5 - half) < 1e-9 and abs(2.5 - lo[0] - half) < 1e-9


def test_flat_hessian_matches_autograd_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 3))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    loss_fn = nn.CrossEntropyLoss(reduction="none")
    got = F._flat_hessian(model, loss_fn, x, y)
    params = [p.detach().double() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def f(flat):
        w1, b1, w2, b2 = (t.reshape(p.shape) for t, p in zip(torch.split(flat, sizes),
                                                              params, strict=True))
        out = torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2
        return loss_fn(out, y).mean()

    want = torch.autograd.functional.hessian(f, torch.cat([p.reshape(-1) for p in params]))
    assert got.shape == (17, 17)
    assert torch.allclose(got, want, atol=1e-12)
    assert next(model.parameters()).dtype == torch.float32  # model left as it was


def test_diagonal_mass_checkpoints_are_chosen_by_accuracy():
    from secondorder.bench.problems import get_problem

    train = get_problem("digits_mlp").train
    res = F.diagonal_mass_checkpoints(train.inputs.reshape(len(train), -1), train.targets,
                                      hidden=4, runs=1)
    assert res["d"] == [4 * 64 + 4 + 10 * 4 + 10]
    for name in ("random inputs", "initialization", "middle", "90% train accuracy"):
        assert len(res[name]) == 1 and 0 < res[name][0] <= 1
    # the network's Hessian is more diagonal than a Wigner matrix of its size (3.6x here)
    assert res["initialization"][0] > 2 * res["Wigner"][0]


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    """One --quick run shared by the tests below (its database and report)."""
    out = tmp_path_factory.mktemp("adaptive_norms_quick")
    return out, run("adaptive_norms", out, quick=True, progress=False)


def test_quick_run_writes_every_table_and_figure(quick_dir):
    _, rep = quick_dir
    assert set(rep["tables"]) == {"Fig. 3 targets", "ARC beside TR", "Figs. 9-11 targets"}
    header, rows, _ = rep["tables"]["Fig. 3 targets"]
    assert header[1:3] == ["Backprops to target (paper)", "Backprops to target (ours)"]
    assert [r[0] for r in rows] == [f"{p}: {m}" for p in ("mlp", "cnn", "autoencoder")
                                    for m in TR]
    for r in rows:
        assert r[2] != "not run" and r[2].endswith("/2)")  # seeds reaching, of 2
        assert r[-1] in ("0/2", "1/2", "2/2")
    rmsprop = [r for r in rows if r[0] == "mlp: TR RMSProp"][0]
    assert rmsprop[1] == "fewer than spherical"  # the paper's claim beside ours
    names = sorted(p.name for p in rep["figures"])
    assert names == sorted(f"adaptive_norms_{s}.png" for s in (
        "fig_1", "fig_2", "fig_3", "fig_9", "fig_10", "fig_11", "arc_beside_tr", "fig_12"))
    for p in rep["figures"]:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    md = rep["markdown"].read_text()
    assert "QUICK run" in md and "scikit-learn's 8 x 8 digits" in md


def test_autoencoder_target_is_the_spherical_median(quick_dir):
    """The autoencoder's 'backprops to target' is measured against the first method's
    (TR spherical) median final loss, so spherical itself reaches it on half the seeds."""
    from secondorder.bench.studies.execute import run_study
    from secondorder.bench.studies.metrics import METRICS, target_of

    study = get_study("adaptive_norms", quick=True)
    results = run_study(study, quick_dir[0] / "results.sqlite", quick=True,
                        progress=False)  # every run is in the database: nothing reruns
    key, target, above = target_of(results, "headline", "autoencoder")
    finals = sorted(r.last["train_loss"] for r in results.runs("headline", "autoencoder",
                                                               "TR spherical"))
    assert key == "train_loss" and not above
    assert math.isclose(target, sum(finals) / 2)  # the median of two seeds
    assert target_of(results, "headline", "mlp")[:2] == ("train_acc", 0.99)
    value, text = METRICS["backprops_to_target"](results, "headline", "autoencoder",
                                                 "TR spherical")
    assert text.endswith("(1/2)") or text.endswith("(2/2)")


@pytest.mark.parametrize("name", ["an_mlp", "an_cnn", "an_autoencoder"])
def test_problems_use_mnist_when_the_data_dir_has_it(mnist_t10k_dir, name):
    from secondorder.bench.studies.problems import BUILDERS

    sp = BUILDERS[name](str(mnist_t10k_dir), True)
    assert sp.tag.startswith("mnist") and "MNIST test set" in sp.data
    model = sp.problem.make_model(0)
    out = model(sp.problem.train.inputs[:4])
    loss = sp.problem.loss(out, sp.problem.train.targets[:4])
    assert loss.shape == (4,) and torch.isfinite(loss).all()
