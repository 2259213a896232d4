"""docs/migration.md runs: each section's before (peer) and after (secondorder) blocks give the
same numbers, asserted inside the doc with the tolerances it states.

The blocks of one ``## `` section run in order in one namespace. A section whose code
imports a peer package (the ``peers`` extra: pyhessian, curvlinops-for-pytorch,
torch-optimizer, pytorch-minimize) is skipped when that package is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "migration.md"
SECTIONS = {
    s.split("\n", 1)[0].strip(): re.findall(r"```python\n(.*?)```", s, flags=re.S)
    for s in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]
}
PEER_MODULES = ("pyhessian", "curvlinops", "torch_optimizer", "torchmin")


def test_every_peer_has_a_section_with_before_and_after():
    titles = " ".join(SECTIONS)
    for peer in ("torch.optim.LBFGS", "PyHessian", "curvlinops", "Adahessian", "scipy.optimize"):
        assert peer in titles
    for title, blocks in SECTIONS.items():
        assert len(blocks) == 2, title
        assert "assert " in blocks[1], title


@pytest.mark.parametrize("title", list(SECTIONS))
def test_migration_section(title):
    code = "\n".join(SECTIONS[title])
    for module in PEER_MODULES:
        if re.search(rf"^(from|import) {module}\b", code, flags=re.M):
            pytest.importorskip(module)
    eig = torch.eig  # the PyHessian section lends torch a stand-in; never leak it
    try:
        exec(compile(code, f"migration.md[{title}]", "exec"), {})
    finally:
        torch.eig = eig
