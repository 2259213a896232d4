"""Bring your own optimizer and problem: import-path specs, TOML configs, entry points."""

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from secondorder import cli
from secondorder.bench import plugins
from secondorder.bench import problems as P
from secondorder.bench.config import ConfigError, load_config
from secondorder.bench.plugins import (
    PluginError,
    declare_optimizer,
    declare_problem,
    parse_optimizer_spec,
    parse_value,
)
from secondorder.bench.problems import core as problems_core
from secondorder.bench.registry import get_optimizer, list_optimizers
from secondorder.bench.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from plugin_helpers import write_toy  # noqa: E402

SMALL = ["--seeds", "1", "--budget", "1", "--grid", "quick", "--no-progress", "--workers", "1",
         "--equal", "epochs"]


def test_parse_value_reads_numbers_bools_none_and_strings():
    assert [parse_value(t) for t in ("3", "1e-3", "-0.5", "true", "False", "none", "adam")] == [
        3, 1e-3, -0.5, True, False, None, "adam"]
    assert isinstance(parse_value("3"), int) and isinstance(parse_value("3.0"), float)


def test_spec_grammar_name_grid_and_fixed_values():
    d = parse_optimizer_spec("mine=torch.optim:RMSprop lr=1e-3,1e-2 alpha=0.9 centered=true")
    assert d.name == "mine" and d.target == "torch.optim:RMSprop"
    assert d.values == {"lr": (1e-3, 1e-2), "alpha": (0.9,), "centered": (True,)}
    assert parse_optimizer_spec("torch.optim:SGD").name == "torch.optim:SGD"


def test_declared_spec_tunes_the_multi_valued_key_and_fixes_the_others(isolated):
    s = declare_optimizer("torch.optim:SGD momentum=0.5,0.9 lr=0.1 nesterov=true")
    assert s.knob == "momentum" and s.grid("quick") == s.grid("full") == (0.5, 0.9)
    assert s.hyperparameters(0.9) == {"lr": 0.1, "nesterov": True, "momentum": 0.9}
    assert s.protocol == "torch" and not s.first_order
    opt = s.build([torch.nn.Parameter(torch.zeros(2))], **s.hyperparameters(0.5))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["nesterov"]
    # No grid: lr over the registry's learning-rate grids; get_optimizer finds it by name.
    r = declare_optimizer("torch.optim:Adagrad")
    assert r.knob == "lr" and r.grid("quick") == (1e-3, 1e-2, 1e-1)
    assert get_optimizer("torch.optim:Adagrad") is r
    assert "torch.optim:Adagrad" in list_optimizers()
    assert declare_optimizer("torch.optim:Adagrad") is r  # declaring again is a no-op


@pytest.mark.parametrize("spec, message", [
    ("nomodule_xyz:Opt lr=1", r"'nomodule_xyz:Opt lr=1'.*cannot import module 'nomodule_xyz'"),
    ("torch.optim:Nope", r"'torch.optim:Nope'.*module 'torch.optim' has no 'Nope'"),
    ("torch.nn:Linear", r"torch.nn:Linear is not a torch.optim.Optimizer subclass"),
    ("torch.optim:SGD lr=1 bogus=2", r"'torch.optim:SGD lr=1 bogus=2'.*SGD takes no "
                                     r"hyperparameter 'bogus'"),
    ("torch.optim:SGD lr=1,2 momentum=0,0.9", r"only one hyperparameter.*lr, momentum"),
    ("torch.optim:SGD lr", r"cannot read 'lr'"),
    ("adam", r"expected 'module.path:Class'.*--optimizers"),
    ("sgd=torch.optim:SGD", r"'sgd' is a built-in optimizer"),
])
def test_bad_specs_are_refused_naming_the_spec(isolated, spec, message):
    with pytest.raises(PluginError, match=message):
        declare_optimizer(spec)


def test_a_name_used_twice_is_refused(isolated):
    declare_optimizer("a=torch.optim:SGD lr=0.1")
    with pytest.raises(PluginError, match=r"'a' is already used by 'a=torch.optim:SGD lr=0.1'"):
        declare_optimizer("a=torch.optim:SGD lr=0.2")


def test_cli_bad_optimizer_spec_exits_2_naming_it(isolated, tmp_path, capsys):
    code = cli.main(["bench", "--problems", "rosenbrock", "--optimizer", "nomod_q:Opt lr=1",
                     *SMALL, "--out", str(tmp_path)])
    assert code == 2
    assert "'nomod_q:Opt lr=1': cannot import module 'nomod_q'" in capsys.readouterr().err
    assert not (tmp_path / "results.sqlite").exists()


def test_user_problem_is_built_from_a_function(isolated, tmp_path):
    mod = write_toy(tmp_path, isolated, "toy_problem_mod")
    declare_problem("toyprob", f"{mod}:make_problem", {"n": 40})
    p = P.get_problem("toyprob", seed=1)
    assert (len(p.train), len(p.validation), len(p.test)) == (30, 10, 10)
    assert p.test is p.validation and p.batch_size == 16 and p.epochs == 1
    a, b = p.make_model(3), p.make_model(3)  # deterministic in the seed, fresh each time
    assert torch.equal(a.weight, b.weight) and a is not b
    assert not torch.equal(a.weight, p.make_model(4).weight)


def test_bad_user_problems_are_refused_naming_them(isolated, tmp_path):
    (tmp_path / "bad_problems_mod.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
        def mean_loss():
            return {"model": nn.Linear(2, 2), "train": (x, y), "validation": (x, y),
                    "loss": nn.CrossEntropyLoss()}
        def missing():
            return {"model": nn.Linear(2, 2), "loss": None, "train": (x, y), "valid": 1}
    """))
    isolated.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"problem 'p1'.*loss must return one value per "
                                          r"sample \(reduction='none'\).*shape \(\)"):
        declare_problem("p1", "bad_problems_mod:mean_loss")
    with pytest.raises(PluginError, match=r"problem 'p2'.*lacks validation; has unknown "
                                          r"keys valid"):
        declare_problem("p2", "bad_problems_mod:missing")
    with pytest.raises(PluginError, match=r"problem 'digits_mlp'.*already registered"):
        declare_problem("digits_mlp", "bad_problems_mod:missing")
    assert "p1" not in P.list_problems() and "p2" not in P.list_problems()


def test_in_process_sweep_with_external_optimizer_and_problem(isolated, tmp_path, capsys):
    """The acceptance run: a user's optimizer and problem, written by the test, benchmarked
    against a built-in optimizer without editing the package."""
    mod = write_toy(tmp_path, isolated, "toy_sweep_mod")
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(textwrap.dedent(f"""
        optimizers = ["sgd"]
        sweep = "byo"
        [problem.toyprob]
        factory = "{mod}:make_problem"
    """))
    out = tmp_path / "out"
    argv = ["bench", "--config", str(cfg), "--optimizer", f"gd={mod}:PlainGD lr=0.5,0.05",
            "--optimizer", f"frozen={mod}:PlainGD lr=0.5 scale=0", *SMALL, "--out", str(out)]
    assert cli.main(argv) == 0
    with Store(out / "results.sqlite") as st:
        runs = st.runs("byo")
        assert {r["problem"] for r in runs} == {"toyprob"}
        assert {r["status"] for r in runs} == {"finished"}
        by_opt = {}
        for r in runs:
            by_opt.setdefault(r["optimizer"], []).append(r)
        assert set(by_opt) == {"sgd", "gd", "frozen"}
        assert sorted(r["hyperparameters"]["lr"] for r in by_opt["gd"]) == [0.05, 0.5]
        assert all(r["hyperparameters"] == {"lr": 0.5, "scale": 0} for r in by_opt["frozen"])
        assert len(by_opt["sgd"]) == 3  # the quick lr grid
        # The fixed scale=0 reached the optimizer: the loss never moved; gd's did.
        frozen = st.measurements(by_opt["frozen"][0]["id"])
        assert len(frozen) >= 2 and frozen[0]["step"] == 0 and frozen[-1]["step"] == 3
        assert all(m["train_loss"] == frozen[0]["train_loss"] for m in frozen)
        gd = [st.measurements(r["id"]) for r in by_opt["gd"]]
        assert all(ms[-1]["train_loss"] < ms[0]["train_loss"] for ms in gd)
    report = (out / "report.md").read_text()
    assert "| gd | lr=" in report
    assert cli.main(argv) == 0  # a rerun declares the same things again and resumes
    assert "new or redone: 0" in capsys.readouterr().out
    # A later `secondorder report` process knows nothing of the declarations: the knob is
    # the hyperparameter that varied in tuning.
    isolated.setattr(plugins, "_OPTIMIZERS", {})
    isolated.setattr(plugins, "_OPTIMIZER_DECLS", {})
    isolated.setenv(plugins.ENV_KEY, "")
    (out / "report.md").unlink()
    assert cli.main(["report", "--out", str(out), "--sweep", "byo"]) == 0
    assert "| gd | lr=" in (out / "report.md").read_text()


def test_worker_processes_replay_the_declarations(isolated, tmp_path):
    mod = write_toy(tmp_path, isolated, "toy_replay_mod")
    declare_optimizer(f"gd={mod}:PlainGD lr=0.5,0.05")
    declare_problem("toyprob2", f"{mod}:make_problem")
    env = json.loads(__import__("os").environ[plugins.ENV_KEY])
    assert [d["name"] for d in env["optimizers"]] == ["gd"]
    assert env["problems"] == [{"name": "toyprob2", "factory": f"{mod}:make_problem",
                                "kwargs": {}}]
    # A fresh (spawned) process knows nothing but the environment.
    isolated.setattr(plugins, "_OPTIMIZERS", {})
    isolated.setattr(plugins, "_OPTIMIZER_DECLS", {})
    isolated.setattr(plugins, "_PROBLEM_DECLS", {})
    isolated.delitem(problems_core._REGISTRY, "toyprob2")
    assert get_optimizer("gd").grid("default") == (0.5, 0.05)
    assert len(P.get_problem("toyprob2").train) == 48


def _fake_distribution(root: Path, entry_points: str) -> None:
    info = root / "fakeplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_entry_points_register_optimizers_and_problems(isolated, tmp_path):
    mod = write_toy(tmp_path, isolated, "toy_ep_mod")
    _fake_distribution(tmp_path, textwrap.dedent(f"""
        [secondorder.optimizers]
        plaingd = {mod}:PlainGD
        broken = nomodule_ep_xyz:Opt

        [secondorder.problems]
        toyep = {mod}:make_problem
    """))
    spec = get_optimizer("plaingd")
    assert spec.knob == "lr" and spec.resolve().__name__ == "PlainGD"
    assert "plaingd" in list_optimizers()
    assert len(P.get_problem("toyep").train) == 48
    with pytest.raises(PluginError, match=r"entry point 'broken'.*failed to load.*"
                                          r"nomodule_ep_xyz"):
        get_optimizer("broken")
    # Entry points are selectable by name but never join the default suite.
    from secondorder.bench.registry import available_optimizers

    assert "plaingd" not in available_optimizers()


# ---------------------------------------------------------------------- config files
def test_config_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, message in [
        ("seeds = 'two'", r"bad.toml: seeds must be int, got 'two'"),
        ("speed = 1", r"bad.toml: unknown key\(s\) speed"),
        ("grid = 'huge'", r"bad.toml: grid must be one of quick, default, full"),
        ("budget = 1\nbudget_seconds = 2", r"give only one of budget"),
        ("[optimizer.x]\nklass = 'a:b'", r"\[optimizer.x\]: unknown key\(s\) klass"),
        ("[problem.y]\nkwargs = {}", r"\[problem.y\]: needs factory"),
        ("seeds = = 1", r"bad.toml: not valid TOML"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(bad)
    with pytest.raises(ConfigError, match=r"--config .*missing.toml: cannot read"):
        load_config(tmp_path / "missing.toml")


def test_cli_bad_config_exits_2(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("seeds = 0.5\n")
    assert cli.main(["bench", "--config", str(tmp_path / "c.toml"), "--out",
                     str(tmp_path / "o")]) == 2
    assert "c.toml: seeds must be int, got 0.5" in capsys.readouterr().err


def test_config_options_and_command_line_precedence(isolated, tmp_path):
    from secondorder.bench.config import apply_bench_extensions

    (tmp_path / "c.toml").write_text(textwrap.dedent("""
        problems = ["rosenbrock"]
        optimizers = ["adam", "torch.optim:RMSprop lr=1e-3,1e-2"]
        seeds = 4
        grid = "full"
        budget_backprops = 5
        evals_per_epoch = 3
        [optimizer.mysgd]
        class = "torch.optim:SGD"
        hyperparameters = { lr = [0.1, 0.01], momentum = 0.9 }
        first_order = true
    """))
    args = cli.build_parser().parse_args(
        ["bench", "--config", str(tmp_path / "c.toml"), "--seeds", "2", "--budget", "1"])
    apply_bench_extensions(args)
    assert args.seeds == 2 and args.grid == "full" and args.evals_per_epoch == 3
    assert args.budget == 1 and args.budget_backprops is None  # the command line's budget
    assert args.problems == ["rosenbrock"]
    assert args.optimizers == ["adam", "torch.optim:RMSprop", "mysgd"]
    s = get_optimizer("mysgd")
    assert s.first_order and s.knob == "lr" and s.defaults == {"momentum": 0.9}


def test_spawned_workers_run_external_optimizer_and_problem(isolated, tmp_path):
    """With --workers 2 the runs execute in spawned processes that only inherit the
    environment and sys.path: they must find the user's optimizer and problem."""
    mod = write_toy(tmp_path, isolated, "toy_workers_mod")
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'problems = []\n[problem.toyw]\nfactory = "{mod}:make_problem"\n')
    out = tmp_path / "out"
    argv = ["bench", "--config", str(cfg), "--optimizers", "sgd", "--optimizer",
            f"gdw={mod}:PlainGD lr=0.5,0.05", "--seeds", "1", "--budget", "1", "--grid",
            "quick", "--no-progress", "--workers", "2", "--equal", "epochs", "--out", str(out)]
    assert cli.main(argv) == 0
    with Store(out / "results.sqlite") as st:
        runs = st.runs()
    assert {(r["problem"], r["optimizer"]) for r in runs} == {("toyw", "sgd"), ("toyw", "gdw")}
    assert len(runs) == 5 and {r["status"] for r in runs} == {"finished"}


def test_list_shows_entry_point_optimizers_and_problems(isolated, tmp_path, capsys):
    mod = write_toy(tmp_path, isolated, "toy_list_mod")
    _fake_distribution(tmp_path, f"[secondorder.optimizers]\nplaingd2 = {mod}:PlainGD\n"
                                 "broken2 = nomodule_ep_abc:Opt\n[secondorder.problems]\n"
                                 f"toylist = {mod}:make_problem\n")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"toylist +n=48 +batch=16", out)
    assert re.search(r"plaingd2 +toy_list_mod:PlainGD \[torch protocol\]", out)
    assert re.search(r"broken2 +NOT AVAILABLE \(.*nomodule_ep_abc", out)
