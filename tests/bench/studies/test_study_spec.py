"""Study declarations are validated before anything runs; errors name the unknown item."""

from __future__ import annotations

import dataclasses

import pytest

from secondorder import cli
from secondorder.bench.store import Store
from secondorder.bench.studies import get_study, list_studies
from secondorder.bench.studies.metrics import niters
from secondorder.bench.studies.render import agreement, paper_number
from secondorder.bench.studies.spec import Column, MethodSpec, ProblemSpec, Row, StudySpecError


def _veitch():
    return get_study("veitch", quick=True)


def _replace_part(study, index, **changes):
    parts = list(study.parts)
    parts[index] = dataclasses.replace(parts[index], **changes)
    return dataclasses.replace(study, parts=tuple(parts))


def test_studies_are_named_after_the_paper_keys_and_valid():
    assert list_studies() == ["veitch", "filippova", "shen", "adaptive_norms"]
    keys = {"adaptive_norms": "[AdaptiveNorms]"}  # a two-word key
    for name in list_studies():
        study = get_study(name)
        assert study.key == keys.get(name, f"[{name.capitalize()}]")
        assert get_study(name, quick=True, seeds=2).validate() is not None


def test_unknown_method_is_named():
    study = _veitch()
    methods = (*study.parts[1].methods, MethodSpec("Mystery", "NewtonRaphsonX"))
    with pytest.raises(StudySpecError, match=r"unknown method 'NewtonRaphsonX' \(label "
                                             r"'Mystery'\)"):
        _replace_part(study, 1, methods=methods).validate()


def test_unknown_problem_is_named():
    study = _veitch()
    problems = (ProblemSpec("imagenet", "imagenet_resnet", 10, "fixed"),)
    with pytest.raises(StudySpecError, match=r"unknown problem 'imagenet_resnet' \(problem "
                                             r"'imagenet'\)"):
        _replace_part(study, 1, problems=problems).validate()


def test_table_rows_must_name_declared_methods_and_problems():
    study = _veitch()
    t = study.tables[0]
    bad_method = dataclasses.replace(t, rows=(Row("x", "reshuffled", "Ghost", ("-",) * 3),))
    with pytest.raises(StudySpecError, match="has no method 'Ghost'"):
        dataclasses.replace(study, tables=(bad_method,)).validate()
    bad_problem = dataclasses.replace(t, rows=(Row("x", "cifar", "NLCG", ("-",) * 3),))
    with pytest.raises(StudySpecError, match="has no problem 'cifar'"):
        dataclasses.replace(study, tables=(bad_problem,)).validate()
    bad_metric = dataclasses.replace(t, columns=(Column("F1", "f1_score"),) * 3)
    with pytest.raises(StudySpecError, match="unknown metric 'f1_score'"):
        dataclasses.replace(study, tables=(bad_metric,)).validate()


def test_special_methods_only_in_iteration_parts_and_budgets_fit_the_kind():
    fil = get_study("filippova", quick=True)
    methods = (*fil.parts[0].methods, MethodSpec("scipy", "scipy_lbfgsb"))
    with pytest.raises(StudySpecError, match="unknown method 'scipy_lbfgsb'"):
        _replace_part(fil, 0, methods=methods).validate()
    with pytest.raises(StudySpecError, match=r"budget \{'iterations': 5\}"):
        _replace_part(fil, 0, budget={"iterations": 5}).validate()


def test_unknown_study_and_bad_seeds():
    with pytest.raises(StudySpecError,
                       match="unknown study 'adaptivenorms'; known: veitch, filippova, shen"):
        get_study("adaptivenorms")
    with pytest.raises(StudySpecError, match="Invalid --seeds 0"):
        get_study("veitch", seeds=0)


def test_cli_list_and_errors(capsys, tmp_path):
    assert cli.main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    assert "veitch" in out and "[Filippova]" in out
    assert cli.main(["study", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert cli.main(["study", "veitch", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "Invalid --seeds 0" in capsys.readouterr().err
    missing = tmp_path / "no-such-dir"
    assert cli.main(["study", "veitch", "--data-dir", str(missing), "--out",
                     str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["study"]) == 2
    broken = tmp_path / "data" / "fashion-mnist"
    broken.mkdir(parents=True)
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    assert cli.main(["study", "veitch", "--quick", "--data-dir", str(tmp_path / "data"),
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "data: " in err and "t10k-images-idx3-ubyte.gz" in err
    with Store(tmp_path / "o" / "results.sqlite") as st:
        assert st.count("runs") == 0  # the data are checked before any run starts


def test_eq29_iterations_to_convergence():
    assert niters([1.0, 0.5, 0.4, 0.39995, 0.3999]) == 3
    assert niters([1.0, 0.5, 0.25]) is None
    assert niters([1.0, 0.5, 0.49], eps=0.02) == 2


def test_paper_numbers_and_agreement_line():
    assert paper_number("7.67 ± 0.09") == 7.67
    assert paper_number("5e-4") == 5e-4
    assert paper_number("NaN") is None and paper_number("-") is None
    t = _veitch().tables[1]
    line = agreement(t, [("A", "Train loss", 0.40, 0.41, 0.05), ("B", "Niters", 8.0, 30.0, 10)])
    assert line.startswith("Agreement: 1 of 2 compared cells within tolerance; differs by up "
                           "to 22 (B, Niters: paper 8, ours 30")
    assert line.endswith(t.note)
    assert agreement(t, [("A", "x", 1.0, 1.01, 0.05)]).startswith("Agreement: agrees")
