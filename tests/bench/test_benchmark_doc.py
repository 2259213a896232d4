"""docs/benchmark.md, "Your own optimizers and problems": the TOML example runs as written."""

import re
from pathlib import Path

from secondorder import cli
from secondorder.bench.store import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmark.md"


def _section() -> str:
    text = DOC.read_text()
    start = text.index("## Your own optimizers and problems")
    return text[start:text.index("\n## ", start + 1)]


def test_the_documented_sweep_file_runs(isolated, tmp_path):
    section = _section()
    toml = next(b for b in re.findall(r"```toml\n(.*?)```", section, flags=re.S)
                if b.startswith("# sweep.toml"))
    module = next(b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)
                  if b.startswith("# mymodule.py"))
    (tmp_path / "sweep.toml").write_text(toml)
    (tmp_path / "mymodule.py").write_text(module)
    isolated.delitem(__import__("sys").modules, "mymodule", raising=False)
    isolated.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["bench", "--config", "sweep.toml", "--no-progress", "--equal", "epochs",
                     "--out", str(out)]) == 0
    with Store(out / "results.sqlite") as st:
        runs = st.runs("mine")
    assert {r["problem"] for r in runs} == {"rosenbrock", "blobs"}
    assert {r["optimizer"] for r in runs} == {"adam", "torch.optim:Adagrad", "my_rmsprop"}
    blobs = [r for r in runs if r["problem"] == "blobs"]
    assert blobs and all(r["status"] == "finished" for r in blobs)
    assert {r["hyperparameters"]["lr"] for r in runs if r["optimizer"] == "my_rmsprop"} == {
        1e-3, 1e-2}
    assert all(r["hyperparameters"]["alpha"] == 0.9 for r in runs
               if r["optimizer"] == "my_rmsprop")
    assert {r["hyperparameters"]["lr"] for r in runs
            if r["optimizer"] == "torch.optim:Adagrad"} == {0.1, 1.0}
    assert all(r["budget"] == {"epochs": 2} for r in runs)
