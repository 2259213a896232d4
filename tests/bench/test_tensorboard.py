"""``secondorder bench --tensorboard DIR``: the event files hold the database's numbers."""

import math
import sys

import pytest

from secondorder import cli
from secondorder.bench.store import Store
from secondorder.bench.tensorboard import SCALARS, run_dir

SMALL = ["--problems", "logistic2d", "--optimizers", "sgd", "--seeds", "1", "--budget", "1",
         "--grid", "quick", "--evals-per-epoch", "2", "--no-progress", "--workers", "1"]


def test_event_files_match_the_database(isolated, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "out", tmp_path / "tb"
    assert cli.main(["bench", *SMALL, "--out", str(out), "--tensorboard", str(tb)]) == 0
    with Store(out / "results.sqlite") as st:
        runs = st.runs("bench")
        # the quick lr grid on seed 0, then the selected setting's equal-time run (seed 0
        # too: its own folder)
        assert len(runs) == 4 and sum("seconds" in r["budget"] for r in runs) == 1
        for r in runs:
            folder = run_dir(tb, "bench", r["problem"], r["optimizer"], r["hyperparameters"],
                             r["seed"], r["budget"].get("seconds"))
            acc = EventAccumulator(str(folder))
            acc.Reload()
            ms = st.measurements(r["id"])
            assert len(ms) >= 3  # step 0, two evaluations per epoch
            tags = set(acc.Tags()["scalars"])
            assert {"train_loss", "val_loss", "val_acc", "wall_time", "backprops"} <= tags
            for key in SCALARS:
                expected = [(m["step"], m[key]) for m in ms
                            if m[key] is not None and math.isfinite(m[key])]
                if not expected:
                    assert key not in tags
                    continue
                got = [(e.step, e.value) for e in acc.Scalars(key)]
                assert [s for s, _ in got] == [s for s, _ in expected], key
                # Event files hold float32: 1e-6 relative is 10x float32 rounding.
                for (_, g), (_, x) in zip(got, expected, strict=True):
                    assert g == pytest.approx(x, rel=1e-6, abs=1e-30), key
            # one epoch (one backprop-equivalent) in tuning; the equal-time run trains more
            # (the fake problem is fast: up to the cap of 20 epochs)
            if "seconds" not in r["budget"]:
                assert acc.Scalars("backprops")[-1].value == pytest.approx(1.0)
            else:
                assert acc.Scalars("backprops")[-1].value == pytest.approx(ms[-1]["backprops"])
                assert ms[-1]["backprops"] > 1.0


def test_tensorboard_missing_exits_2_with_the_install_command(isolated, tmp_path, capsys):
    isolated.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    code = cli.main(["bench", *SMALL, "--out", str(tmp_path / "o"), "--tensorboard",
                     str(tmp_path / "tb")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "pip install 'secondorder[tensorboard]'" in err
    assert not (tmp_path / "o" / "results.sqlite").exists()
