"""The ``secondorder`` command line. (Being written: see issue 5.)"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("secondorder: the command line is being written")
