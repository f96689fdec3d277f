"""`adamk-bench readme`: README's speed table from recorded adamk-bench runs (small fixture JSON)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ada_mk.bench.readme_table import BEGIN, END, ReadmeTableError, latest_runs, load_runs, rewrite_readme, speed_table
from ada_mk.cli.bench import main as bench_main

ROOT = Path(__file__).resolve().parents[1]


def _row(config: str, context: int, system: str, ms: float | None, frac: float | None = None, **more) -> dict:
    return {"config": config, "batch": 1, "context": context, "system": system, "ms": ms,
            "frac_read_bw": frac, "error": "" if ms else "NOT TIMED", **more}


def _run(d: Path, name: str, card: str, date: str, commit: str, rows: list[dict], batch: int = 1, **meta) -> None:
    doc = {"meta": {"card": card, "date": date, "commit": commit, "batch": batch, **meta},
           "results": [{**r, "batch": batch} for r in rows]}
    (d / name).write_text(json.dumps(doc))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    _run(d, "bench-1.json", "NVIDIA H100 80GB HBM3", "2026-11-28 01:22 UTC", "aaaaaaa",
         [_row("llama3-8b", 512, "megakernel", 6.0, 0.80), _row("llama3-8b", 512, "compile-flex", 6.5)])
    _run(d, "bench-2.json", "NVIDIA H100 80GB HBM3", "2026-12-01 09:00 UTC", "bbbbbbb",
         [_row("llama3-8b", 512, "megakernel", 5.5, 0.916, fixed_us_per_layer=14.44),
          _row("llama3-8b", 512, "compile-flex", 6.512),
          # recorded before rows carried the fixed cost: from floor_ms and the shipped config's 32 layers
          _row("llama3-8b", 4096, "megakernel", 5.793, 0.898, floor_ms=5.2)])
    # later, but cut off / without a MegaKernel time / a CPU smoke run: never the table's source
    _run(d, "bench-3.json", "NVIDIA H100 80GB HBM3", "2026-12-02 09:00 UTC", "ccccccc",
         [_row("llama3-8b", 512, "megakernel", 4.0, 0.9)], interrupted=True)
    _run(d, "bench-4.json", "NVIDIA H100 80GB HBM3", "2026-12-03 09:00 UTC", "ddddddd",
         [_row("llama3-8b", 512, "megakernel", None), _row("llama3-8b", 512, "compile-flex", 6.4)])
    _run(d, "bench-5.json", "CPU (x86_64)", "2026-12-04 09:00 UTC", "eeeeeee",
         [_row("tiny", 16, "megakernel", 1.0, 0.1)])
    _run(d, "bench-6.json", "NVIDIA H200", "2026-12-03 22:30 UTC", "1b64f84",
         [_row("llama3.2-1b", 512, "megakernel", 0.928, 0.669), _row("llama3.2-1b", 512, "compile-flex", 1.287)],
         batch=8)
    (d / "notes.json").write_text("not json")
    return d


def test_latest_run_per_card_and_batch(results: Path) -> None:
    runs = latest_runs(load_runs(results))
    assert [(r.card, r.batch, r.path.name) for r in runs] == [("H100", 1, "bench-2.json"), ("H200", 8, "bench-6.json")]


def test_table_rows(results: Path) -> None:
    table = speed_table(latest_runs(load_runs(results)))
    rows = [line for line in table.splitlines() if line.startswith("| H")]
    assert rows == [
        "| H100 | 1 | llama3-8b | 512 | 5.500 | 91.6% | 14.4 | 6.512 | 1.18x | 2026-12-01 09:00 UTC, bbbbbbb |",
        "| H100 | 1 | llama3-8b | 4,096 | 5.793 | 89.8% | 18.5 | - | - | 2026-12-01 09:00 UTC, bbbbbbb |",
        "| H200 | 8 | llama3.2-1b | 512 | 0.928 | 66.9% | - | 1.287 | 1.39x | 2026-12-03 22:30 UTC, 1b64f84 |",
    ]
    assert "`bench-2.json`, `bench-6.json`" in table
    with pytest.raises(ReadmeTableError):
        speed_table([])


def test_rewrite_between_markers(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    r = CliRunner().invoke(bench_main, ["readme", "--readme", str(readme), "--results-dir", str(results)])
    assert r.exit_code == 0, r.output
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "| H200 | 8 | llama3.2-1b | 512 | 0.928 |" in text
    assert not rewrite_readme(readme, speed_table(latest_runs(load_runs(results))))  # unchanged the second time
    r = CliRunner().invoke(bench_main, ["readme", "--check", "--readme", str(readme), "--results-dir", str(results)])
    assert r.exit_code == 0, r.output


def test_no_markers_is_one_line(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    r = CliRunner().invoke(bench_main, ["readme", "--readme", str(readme), "--results-dir", str(results)])
    assert r.exit_code == 2 and r.stderr.startswith("adamk-bench readme: error: ")
    assert len(r.stderr.splitlines()) == 1 and readme.read_text() == "# no table here\n"


def test_checked_in_readme_is_up_to_date() -> None:
    """README.md's table is what `adamk-bench readme` makes of benchmarks/results/."""
    r = CliRunner().invoke(bench_main, ["readme", "--check"])
    assert r.exit_code == 0, r.output


def test_table_columns_for_the_8bit_baselines(tmp_path: Path) -> None:
    """A run that also timed compile-int8 / compile-fp8 gets a column each (ms per step); the
    speedup stays against compile-flex; a table of runs without them keeps its columns."""
    d = tmp_path / "results"
    d.mkdir()
    _run(d, "bench-1.json", "NVIDIA H100 80GB HBM3", "2026-12-08 09:00 UTC", "fffffff",
         [_row("llama3-8b", 512, "megakernel", 5.3, 0.949), _row("llama3-8b", 512, "compile-flex", 6.4),
          _row("llama3-8b", 512, "compile-int8", 5.0), _row("llama3-8b", 4096, "megakernel", 5.6, 0.9)])
    lines = speed_table(latest_runs(load_runs(d))).splitlines()
    assert lines[0].endswith("| speedup | torch.compile int8 weights ms/step | run (date, commit) |")
    assert lines[1] == "|" + " --- |" * 11
    assert lines[2] == "| H100 | 1 | llama3-8b | 512 | 5.300 | 94.9% | - | 6.400 | 1.21x | 5.000 | 2026-12-08 09:00 UTC, fffffff |"
    assert lines[3].endswith("| - | - | - | 2026-12-08 09:00 UTC, fffffff |")
    assert all(line.count("|") == lines[0].count("|") for line in lines[:4])
