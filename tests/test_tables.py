"""One table renderer: aligned text for the terminal, markdown for reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videomla.benchmark.report import markdown
from videomla.evaluation import AGGREGATES, METRICS
from videomla.evaluation.scoring import Evaluation
from videomla.tables import records_table, render_table

ROOT = Path(__file__).resolve().parents[1]


def test_text_table_pads_every_column_to_its_widest_cell() -> None:
    text = render_table(["model", "r", "E"], [["a", 1, "0.5"], ["long-name", 12, None]])
    assert text.splitlines() == ["model       r     E", "a           1   0.5", "long-name  12  None"]


def test_markdown_table() -> None:
    assert render_table(["a", "b c"], [[1, "x"], ["", 2.5]], markdown=True) == (
        "| a | b c |\n|---|---|\n| 1 | x |\n|  | 2.5 |"
    )
    assert render_table(["only"], [], markdown=True) == "| only |\n|---|"


def test_records_table_formats_columns_and_shows_none_as_a_dash() -> None:
    columns = [("name", "model", ""), ("k", "K", "d"), ("e", "E(K)", ".3f")]
    records = [{"name": "x", "k": 7, "e": 0.12345, "unused": 1}, {"name": "yy", "k": None, "e": 1.0}]
    assert records_table(records, columns).splitlines() == ["model  K   E(K)", "x      7  0.123", "yy     -  1.000"]
    assert (
        records_table(records[:1], columns, markdown=True) == "| model | K | E(K) |\n|---|---|---|\n| x | 7 | 0.123 |"
    )


def test_a_row_must_fill_the_header() -> None:
    with pytest.raises(ValueError, match="a table row has 1 cells for 2 columns"):
        render_table(["a", "b"], [["only one"]])


def test_the_evaluation_table() -> None:
    cols = (*METRICS, *AGGREGATES)
    windows = [{"start_s": 5.0 * i, "end_s": 5.0 * (i + 1), **{c: 1.0 - i / 10 for c in cols}} for i in range(2)]
    result = Evaluation("a red circle", 8, 80, windows, {c: 0.95 for c in cols}, {c: 0.1 for c in cols})
    lines = result.table().splitlines()
    assert lines[0].split() == ["window", *cols]
    assert [line.split()[0] for line in lines[1:]] == ["0.0-5.0", "5.0-10.0", "all", "drift"]
    assert lines[2].split()[2:] == ["0.900"] * len(cols) and lines[-1].split()[1:] == ["+0.100"] * len(cols)
    assert len({len(line) for line in lines}) == 1  # right-aligned columns: every line as long as the header


def test_bench_markdown_tables_are_whole() -> None:
    """The five tables of benchmarks/h100.json's report: a header, a rule, one full row per record."""
    report = json.loads((ROOT / "benchmarks" / "h100.json").read_text())
    blocks, block = [], []
    for line in [*markdown(report).splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    variants = report["variants"]
    counts = [len(variants), len(variants), sum(len(v["batched"]) for v in variants)]
    counts += [sum(1 for v in variants if v["concurrency"]), len(report["targets"])]
    assert [len(b) - 2 for b in blocks] == counts
    for header, rule, *rows in blocks:
        columns = header.count("|") - 1
        assert rule == "|" + "---|" * columns and all(row.count("|") == columns + 1 for row in rows), header
    first = blocks[0][2].split(" | ")
    v = variants[0]
    assert (
        first[0] == f"| {v['name']}" and first[1] == v["window"]["label"] and first[3] == f"{v['kv_bytes_per_token']:,}"
    )
    t = report["targets"][0]
    shown = t["value"] if isinstance(t["value"], bool) or t["value"] is None else f"{t['value']:.3g}"
    assert blocks[-1][2] == f"| {t['name']} | {shown} | {t['target']} | {t['met']} |"
