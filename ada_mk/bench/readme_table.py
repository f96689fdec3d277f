"""README's speed table, made from the runs adamk-bench recorded (benchmarks/results/*.json).

For each (card, batch), the latest run that timed the MegaKernel gives the rows: one per (model,
context), the MegaKernel's ms per step and fraction of the read bandwidth that run measured, the
torch.compile + flex_attention baseline of the same run, and the run's date and commit. Where a
chosen run also timed the 8-bit baselines (compile-int8, compile-fp8), a column each gives their
ms per step beside it; the speedup stays against the bf16 baseline. The table lives in README.md
between BEGIN and END; `rewrite_readme` replaces what is between them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..config.gpus import find_gpu
from .report import QUANTIZED_BASELINES, REFERENCE_SYSTEM, SYSTEM_NAMES, SYSTEM_WEIGHTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BEGIN = "<!-- speed table: written by `adamk-bench readme`; edits between these lines are overwritten -->"
END = "<!-- end of speed table -->"


class ReadmeTableError(Exception):
    """The README has no markers, or no run to make the table from; str() is one line."""


@dataclass(frozen=True)
class Run:
    """One recorded adamk-bench run (a benchmarks/results/*.json)."""

    path: Path
    meta: dict[str, Any]
    results: list[dict[str, Any]]

    @property
    def card(self) -> str:
        """The card's short name ("H100") where ada_mk knows it, else the name torch gave."""
        name = str(self.meta.get("card", "?"))
        spec = find_gpu(name)
        return spec.name if spec is not None else name

    @property
    def batch(self) -> int:
        return int(self.meta.get("batch", 1))

    @property
    def date(self) -> str:
        return str(self.meta.get("date", "?"))

    def timed(self, system: str) -> dict[tuple[str, int], float]:
        """(config, context) -> ms per step of `system`, for the rows it timed."""
        return {(r["config"], int(r["context"])): float(r["ms"]) for r in self.results
                if r.get("system") == system and r.get("ms")}


def load_runs(results_dir: Path) -> list[Run]:
    """Every recorded GPU run under results_dir (CPU smoke runs and unreadable files skipped)."""
    runs = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
            meta, results = doc["meta"], doc["results"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if str(meta.get("card", "")).startswith("CPU") or not isinstance(results, list):
            continue
        runs.append(Run(p, meta, results))
    return runs


def latest_runs(runs: Iterable[Run]) -> list[Run]:
    """Per (card, batch), the latest run that timed the MegaKernel, not cut off; by card, batch."""
    best: dict[tuple[str, int], Run] = {}
    for r in runs:
        if r.meta.get("interrupted") or not r.timed("megakernel"):
            continue
        key = (r.card, r.batch)
        if key not in best or (r.date, r.path.name) > (best[key].date, best[key].path.name):
            best[key] = r
    return [best[k] for k in sorted(best)]


def _megakernel_row(run: Run, config: str, context: int) -> dict[str, Any]:
    for r in run.results:
        if r.get("system") == "megakernel" and r.get("config") == config and int(r.get("context", -1)) == context:
            return r
    return {}


def _fixed_us_per_layer(row: dict[str, Any]) -> float | None:
    """Row.fixed_us_per_layer, also for runs recorded before adamk-bench wrote it (their rows name
    no layer count: the config's own is looked up)."""
    if row.get("fixed_us_per_layer") is not None:
        return float(row["fixed_us_per_layer"])
    if not row.get("ms") or not row.get("floor_ms"):
        return None
    try:
        from ..config import load_config

        model, _ = load_config(CONFIGS / f"{row['config']}.yaml")
    except Exception:  # a config no longer shipped: the column stays empty
        return None
    return (float(row["ms"]) - float(row["floor_ms"])) * 1e3 / model.num_hidden_layers


def speed_table(runs: Iterable[Run]) -> str:
    """The markdown table (and the line that says where it comes from) for these runs."""
    runs = list(runs)
    if not runs:
        raise ReadmeTableError("no recorded run timed the MegaKernel")
    base = SYSTEM_NAMES[REFERENCE_SYSTEM]
    extra = [x for x in QUANTIZED_BASELINES if any(run.timed(x) for run in runs)]  # the 8-bit baselines, if timed
    lines = [
        f"| card | batch | model | context | MegaKernel ms/step | % of read bandwidth | fixed us per layer "
        f"| {base} ms/step | speedup | "
        + "".join(f"torch.compile {SYSTEM_WEIGHTS[x]} weights ms/step | " for x in extra) + "run (date, commit) |",
        "|" + " --- |" * (10 + len(extra)),
    ]
    for run in runs:
        mk, ref = run.timed("megakernel"), run.timed(REFERENCE_SYSTEM)
        more = [run.timed(x) for x in extra]
        for (config, context), ms in sorted(mk.items()):
            row = _megakernel_row(run, config, context)
            frac, fixed = row.get("frac_read_bw"), _fixed_us_per_layer(row)
            b = ref.get((config, context))
            lines.append(
                f"| {run.card} | {run.batch} | {config} | {context:,} | {ms:.3f} "
                f"| {'-' if not frac else f'{100 * frac:.1f}%'} | {'-' if fixed is None else f'{fixed:.1f}'} "
                f"| {'-' if b is None else f'{b:.3f}'} "
                f"| {'-' if b is None else f'{b / ms:.2f}x'} | "
                + "".join(f"{t[(config, context)]:.3f} | " if (config, context) in t else "- | " for t in more)
                + f"{run.date}, {run.meta.get('commit', '?')} |")
    sources = ", ".join(f"`{r.path.name}`" for r in runs)
    return ("\n".join(lines) + "\n\n"
            f"Each row: the latest `adamk-bench` run on that card at that batch ({sources} under "
            "`benchmarks/results/`), the MegaKernel and the baseline timed side by side in that run; "
            "% of read bandwidth is bytes per step over the read bandwidth the same run measured; the fixed "
            "cost per layer is (ms per step - bytes / read bandwidth) / layers.\n")


def rewrite_readme(readme: Path, table: str) -> bool:
    """Put `table` between the markers in readme; True when the file changed."""
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ReadmeTableError(f"{readme}: expected one line {BEGIN!r} and, after it, one line {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table.rstrip()}\n{END}{tail}"
    if new == text:
        return False
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(readme)
    return True
