"""`adamk-bench readme`: rewrite README's speed table from the latest recorded run of each card
(ada_mk.bench.readme_table).

    adamk-bench readme                      # README.md from benchmarks/results/*.json
    adamk-bench readme --check              # exit 1 when README's table is not what the runs give
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click

from .common import command, fail_as, say

PROG = "adamk-bench readme"
ROOT = Path(__file__).resolve().parents[2]
log = partial(say, PROG)
fail = partial(fail_as, PROG)


@command(PROG)
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=ROOT / "README.md",
              help="The README whose table (between its speed-table marker comments) is rewritten. "
                   "[default: README.md of this checkout]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "benchmarks" / "results",
              help="Where adamk-bench's JSON records are. [default: benchmarks/results of this checkout]")
@click.option("--check", is_flag=True, help="Change nothing; exit status 1 when the table is out of date.")
@click.option("--print", "print_only", is_flag=True, help="Print the table to stdout; change nothing.")
def main(readme: Path, results_dir: Path, check: bool, print_only: bool) -> int:
    """Write README's speed table from the latest adamk-bench run of each (card, batch) under
    --results-dir: MegaKernel and torch.compile ms per step per model and context, with each
    row's card, date and commit. Run it after adding a run's JSON to benchmarks/results/."""
    from ..bench.readme_table import ReadmeTableError, latest_runs, load_runs, rewrite_readme, speed_table

    try:
        runs = latest_runs(load_runs(results_dir))
        table = speed_table(runs)
        if print_only:
            click.echo(table, nl=False)
            return 0
        if check:
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                copy = Path(d) / readme.name
                shutil.copy(readme, copy)
                stale = rewrite_readme(copy, table)
            log(f"{readme}: the speed table is {'out of date: run adamk-bench readme' if stale else 'up to date'}")
            return 1 if stale else 0
        changed = rewrite_readme(readme, table)
    except ReadmeTableError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    log(f"{'rewrote' if changed else 'unchanged:'} {readme} from {', '.join(r.path.name for r in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
