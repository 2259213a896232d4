"""docs/writing_optimizers.md runs: its Python blocks, in order, as one script."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing_optimizers.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_worked_example_is_short_and_complete():
    assert len(BLOCKS) >= 5
    optimizer = BLOCKS[0]
    assert "class DampedNewton" in optimizer
    assert len(optimizer.strip().splitlines()) < 60
    assert not re.search(r"secondorder\.\w+\._|import _", "\n".join(BLOCKS))  # no private names


def test_worked_example_runs():
    from secondorder.bench.registry import REGISTRY

    namespace: dict = {"__name__": "writing_optimizers_example"}
    try:
        for i, block in enumerate(BLOCKS):
            exec(compile(block, f"writing_optimizers.md[python block {i}]", "exec"), namespace)
    finally:
        REGISTRY.pop("DampedNewton", None)
