"""Every work the package, README and docs cite resolves in docs/references.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"(?<![\w.\[`])\[([A-Z][A-Za-z]+(?:(?:19|20)\d\d[a-z]?)?)\](?![(\[:])")
NOT_CITATIONS = {"None", "Path", "Tensor", "Any", "str", "int", "float", "bool", "Sequence"}


def _sources():
    yield from (ROOT / "src").rglob("*.py")
    yield ROOT / "README.md"
    yield from (p for p in (ROOT / "docs").rglob("*.md") if p.name != "references.md")


def _defined() -> set[str]:
    text = (ROOT / "docs" / "references.md").read_text()
    return set(re.findall(r"^\| \[([A-Za-z0-9]+)\] \|", text, flags=re.M))


def test_every_cited_key_resolves_in_references():
    defined = _defined()
    missing = {}
    for path in _sources():
        for key in KEY.findall(path.read_text()):
            if key not in defined and key not in NOT_CITATIONS:
                missing.setdefault(key, path.relative_to(ROOT).as_posix())
    assert not missing, f"citation keys missing from docs/references.md: {missing}"


def test_no_seed_numbers_are_cited():
    pattern = re.compile(r"\bseeds? 00[0-3]\b", re.I)
    offenders = [p.relative_to(ROOT).as_posix() for p in _sources()
                 if pattern.search(p.read_text())]
    assert not offenders, f"'seed 00N' cited in {offenders}: cite docs/references.md keys"


def test_references_list_the_four_studies_by_author_and_title():
    text = (ROOT / "docs" / "references.md").read_text()
    assert "Filippova, Sofia Blinova, Tikhon Parshikov" in text
    assert "Adaptive norms for deep learning with regularized Newton methods" in text
    assert "Second-order Neural Network Training Using Complex-step Directional Derivative" in text
    assert "Fashion MNIST dataset" in text and "Ben Veitch" in text
    assert len(_defined()) >= 30
