"""A study's report: ``study.md`` and ``study.html`` with every table and figure.

Each table keeps the paper's layout (its rows, its columns) and puts the paper's number
and ours side by side in every column; its caption says which data ran (the paper's or a
named stand-in) and the part's budget and seeds; an **agreement** line follows: how many
compared cells agree within the column's tolerance and the largest difference, then the
table's note on why ours may differ. Figures are PNGs under ``figures/``, redrawn from our
runs by the study's ``draw`` functions.
"""

from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from secondorder.bench.studies.execute import Results  # noqa: E402
from secondorder.bench.studies.metrics import METRICS  # noqa: E402
from secondorder.bench.studies.spec import Table  # noqa: E402

__all__ = ["paper_number", "table_rows", "agreement", "write_study_report"]

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)


def paper_number(text: str) -> float | None:
    """The first number printed in a paper cell (``"7.67 ± 0.09"`` -> 7.67), or ``None``."""
    m = _NUMBER.search(text or "")
    return None if m is None else float(m.group())


def table_rows(results: Results, table: Table) -> tuple[list[str], list[list[str]], list[tuple]]:
    """Header, rows of text, and the compared cells ``(row, column, paper, ours, tol)``."""
    header = [table.columns and "Method" or ""]
    for c in table.columns:
        header += [f"{c.header} (paper)", f"{c.header} (ours)"]
    rows, compared = [], []
    for r in table.rows:
        line = [r.label]
        for c, paper in zip(table.columns, r.paper, strict=True):
            value, text = METRICS[c.metric](results, table.part, r.problem, r.method)
            line += [paper, text]
            p = paper_number(paper)
            if c.tolerance is not None and p is not None:
                compared.append((r.label, c.header, p, value, c.tolerance))
        rows.append(line)
    return header, rows, compared


def agreement(table: Table, compared: list[tuple]) -> str:
    """The table's agreement line (module docstring)."""
    if not compared:
        return "Agreement: no cell is compared numerically. " + table.note
    ok = [c for c in compared if c[3] is not None and abs(c[3] - c[2]) <= c[4]]
    missing = [c for c in compared if c[3] is None]
    diffs = [(abs(c[3] - c[2]), c) for c in compared if c[3] is not None]
    text = f"Agreement: {len(ok)} of {len(compared)} compared cells within tolerance"
    if len(ok) == len(compared):
        text = f"Agreement: agrees ({len(ok)} of {len(compared)} compared cells within tolerance"
        text += "). "
    else:
        text += "; "
        if diffs:
            d, (row, col, p, ours, tol) = max(diffs, key=lambda t: t[0])
            text += (f"differs by up to {d:.3g} ({row}, {col}: paper {p:g}, ours {ours:.4g}; "
                     f"tolerance {tol:g})")
        if missing:
            text += f"; {len(missing)} cell(s) without a value of ours"
        text += ". "
    return text + table.note


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _caption(results: Results, table: Table) -> str:
    part = results.study.part(table.part)
    datas = []
    for p in part.problems:
        sp = results.problems.get((part.name, p.name))
        if sp is not None and sp.data not in datas:
            datas.append(sp.data)
    budget = ", ".join(f"{v:g} {k}" for k, v in part.budget.items())
    return (f"{table.caption} Data: {'; '.join(datas)}. Budget {budget}; seeds "
            f"{part.seeds} (mean ± sd over seeds where more than one).")


def write_study_report(results: Results, out_dir: str | Path, *, command: str = "",
                       quick: bool = False) -> dict[str, Any]:
    """Write ``study.md``, ``study.html`` and ``figures/*.png`` under ``out_dir``.

    Returns:
        ``{"markdown": path, "html": path, "figures": [paths], "tables": {name: (header,
        rows, agreement)}}``.
    """
    study = results.study
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kind = "QUICK run (--quick: CI-sized, not the study's result)" if quick else "default run"
    md = [f"# Study {study.key}: {study.title}", "",
          f"{kind}; written {stamp}." + (f" Command: `{command}`." if command else ""), ""]
    md += [f"- {n}" for n in study.notes] + [""] if study.notes else []
    md += ["Data: " + " ".join(f"{d}." for d in results.data_notes()), ""]
    hparts = [f"<h1>Study {html.escape(study.key)}: {html.escape(study.title)}</h1>",
              f"<p>{html.escape(md[2])}</p>"]
    hparts += ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in study.notes) + "</ul>"]
    tables = {}
    for t in study.tables:
        header, rows, compared = table_rows(results, t)
        line = agreement(t, compared)
        caption = _caption(results, t)
        tables[t.name] = (header, rows, line)
        md += [f"## {t.name}", "", caption, "", _md_table(header, rows), "", line, ""]
        hparts += [f"<h2>{html.escape(t.name)}</h2>", f"<p>{html.escape(caption)}</p>",
                   _html_table(header, rows), f"<p><b>{html.escape(line)}</b></p>"]
    figures = []
    for f in study.figures:
        slug = re.sub(r"[^a-z0-9]+", "_", f.name.lower()).strip("_")
        path = figdir / f"{study.name}_{slug}.png"
        f.draw(results, path)
        figures.append(path)
        rel = f"figures/{path.name}"
        md += [f"## {f.name}", "", f"![{f.name}]({rel})", "", f.caption, ""]
        hparts += [f"<h2>{html.escape(f.name)}</h2>", f'<img src="{rel}" width="720">',
                   f"<p>{html.escape(f.caption)}</p>"]
    md_path, html_path = out / "study.md", out / "study.html"
    md_path.write_text("\n".join(md))
    style = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 6px}"
             "</style>")
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                         f"{html.escape(study.key)}</title>{style}</head><body>"
                         + "\n".join(hparts) + "</body></html>")
    return {"markdown": md_path, "html": html_path, "figures": figures, "tables": tables}


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)
