"""Both studies' --quick runs: every table in the paper's layout with the paper's numbers
beside ours, every figure, the agreement lines, and resume through the store."""

from __future__ import annotations

import io
import math

import pytest

from secondorder.bench.store import Store
from secondorder.bench.studies import get_study, run
from secondorder.bench.studies.execute import count_runs, run_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: The papers' numbers, copied from their tables: (table, row label, paper cells).
PAPER = {
    "veitch": [
        ("Table 1", "Newton (LS)", ("-", "0.4019", "0.83")),
        ("Table 1", "Newton (noLS)", ("-", "0.5613", "0.81")),
        ("Table 1", "L-BFGS", ("-", "0.6030", "0.51")),
        ("Table 1", "NLCG", ("-", "0.5989", "0.51")),
        ("Table 2", "Newton (LS)", ("8", "0.4058", "0.83")),
        ("Table 2", "Newton (noLS)", ("50", "0.5617", "0.81")),
        ("Table 2", "BFGS", ("20", "0.4058", "0.83")),
        ("Table 2", "NLCG", ("31", "0.4058", "0.83")),
        ("Table 3", "Gradient 1L", ("0.7232", "0.7195")),
        ("Table 3", "NLCG 1L", ("0.8363", "0.8336")),
        ("Table 3", "L-BFGS-B 1L", ("0.8307", "0.8293")),
        ("Table 3", "Gradient 2L", ("0.7029", "0.7038")),
        ("Table 3", "NLCG 2L", ("0.7627", "0.7650")),
        ("Table 3", "L-BFGS-B 2L", ("0.7782", "0.7845")),
        ("Table 4", "Gradient 1L", ("411.9", "8.2", "1.00")),
        ("Table 4", "L-BFGS-B 1L", ("569.3", "11.3", "1.38")),
        ("Table 4", "NLCG 1L", ("751.1", "15.0", "1.83")),
        ("Table 4", "Gradient 2L", ("509.7", "10.2", "1.00")),
        ("Table 4", "L-BFGS-B 2L", ("1010.1", "20.2", "1.98")),
        ("Table 4", "NLCG 2L", ("1215.2", "24.3", "2.38")),
    ],
    "filippova": [
        ("Table 1", "SGD", ("1e-1", "0.64", "7.67 ± 0.09", "1.00")),
        ("Table 1", "SGD", ("1e-2", "0.58", "6.88 ± 0.12", "0.90")),
        ("Table 1", "SGD-MOMENTUM", ("1e-2", "0.65", "6.89 ± 0.30", "0.90")),
        ("Table 1", "ADAM", ("5e-4", "0.62", "7.00 ± 0.18", "0.91")),
        ("Table 1", "ADAHESIAN", ("1e-1", "0.51", "8.28 ± 0.39", "1.08")),
        ("Table 1", "BB", ("1e-2", "0.42", "7.23 ± 0.13", "0.94")),
        ("Table 1", "LBFGS (paper: NaN)", ("-", "NaN", "-", "-")),
    ],
}
HEADERS = {
    ("veitch", "Table 1"): ("Niters", "Train loss", "Test accuracy"),
    ("veitch", "Table 2"): ("Niters", "Train loss", "Test accuracy"),
    ("veitch", "Table 3"): ("Train acc", "Dev acc"),
    ("veitch", "Table 4"): ("Runtime (s)", "Runtime per iteration (s)",
                            "Per iteration / gradient"),
    ("filippova", "Table 1"): ("LR", "Accuracy", "Epoch time (s)", "Epoch time / SGD lr 1e-1"),
}
FIGURES = {"veitch": ("fig_1", "fig_2", "fig_4", "fig_5", "figs_6_7"),
           "filippova": ("fig_1", "fig_2", "fig_3")}


@pytest.fixture(scope="module", params=["veitch", "filippova"])
def quick(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    rep = run(request.param, out, quick=True, progress=False)
    return request.param, out, rep


def test_every_table_has_the_papers_layout_and_numbers(quick):
    name, out, rep = quick
    for (study, table), headers in HEADERS.items():
        if study != name:
            continue
        header, rows, line = rep["tables"][table]
        expected = ["Method"] + [f"{h} ({w})" for h in headers for w in ("paper", "ours")]
        assert header == expected
        assert line.startswith("Agreement: ")
    for table, label, paper in PAPER[name]:
        _, rows, _ = rep["tables"][table]
        matches = [r for r in rows if r[0] == label and tuple(r[1::2]) == paper]
        assert matches, f"{table} has no row {label!r} with the paper's cells {paper}"
        assert all(cell not in ("", "not run") for cell in matches[0][2::2])
    md = (out / "study.md").read_text()
    html = (out / "study.html").read_text()
    for table in rep["tables"]:
        assert f"## {table}" in md and f"<h2>{table}</h2>" in html
    assert "QUICK run" in md
    assert md.count("Agreement: ") == len(rep["tables"])


def test_every_caption_names_the_stand_in_data(quick):
    name, out, _ = quick
    md = (out / "study.md").read_text()
    lines = md.splitlines()
    stand_in = "digits standing in for " + ("Fashion-MNIST" if name == "veitch" else "CIFAR-10")
    for table in get_study(name, quick=True).tables:
        caption = lines[lines.index(f"## {table.name}") + 2]  # heading, blank, caption
        assert " Data: " in caption
        if table.part != "rosenbrock":
            assert "standing in for" in caption or "generated stand-in" in caption
    assert stand_in in md


def test_every_figure_is_a_png(quick):
    name, out, rep = quick
    written = {p.name for p in rep["figures"]}
    for slug in FIGURES[name]:
        path = out / "figures" / f"{name}_{slug}.png"
        assert path.name in written and path.read_bytes()[:8] == PNG_MAGIC
        assert f"figures/{path.name}" in (out / "study.html").read_text()


def test_runs_are_in_the_bench_store_and_a_rerun_resumes(quick):
    name, out, _ = quick
    study = get_study(name, quick=True)
    with Store(out / "results.sqlite") as st:
        runs = st.runs()
        before = st.count("runs")
    assert before == count_runs(study)
    assert {r["sweep"] for r in runs} == {f"study:{name}:{p.name}" for p in study.parts}
    assert all(r["status"] in ("finished", "diverged", "failed") for r in runs)
    log = io.StringIO()
    run_study(study, out / "results.sqlite", quick=True, stream=log)
    assert log.getvalue().count(" skipped ") == before  # nothing reran
    with Store(out / "results.sqlite") as st:
        assert st.count("runs") == before


def test_quick_results_are_sane(quick):
    name, out, rep = quick
    if name == "veitch":
        # Fixed batches covering the set are the full-batch convex objective: every method
        # with a line search reaches the same test accuracy as Newton.
        _, rows, _ = rep["tables"]["Table 2"]
        accs = {float(r[6]) for r in rows}
        assert len(accs) == 1
        # Rosenbrock (b = 50): Newton reaches the minimum (1, 1) within the quick budget,
        # gradient descent with step 1e-3 does not.
        with Store(out / "results.sqlite") as st:
            last = {}
            for r in st.runs("study:veitch:rosenbrock"):
                last[r["optimizer"]] = st.measurements(r["id"])[-1]["optimizer_counters"]["x"]
        assert last["newton_nols"] == pytest.approx([1.0, 1.0], abs=1e-6)
        assert abs(last["sgd"][0] - 1.0) > 1e-2
    else:
        _, rows, _ = rep["tables"]["Table 1"]
        sgd = next(r for r in rows if r[1] == "1e-1")
        assert float(sgd[8]) == pytest.approx(1.0)  # SGD lr 0.1 is the reference epoch
        acc = float(sgd[4].split()[0])
        assert 0.0 <= acc <= 1.0 and not math.isnan(acc)
