"""`adamk-bench`: ms/token, tokens/s, achieved GB/s and fraction of the measured read bandwidth of
the MegaKernel and PyTorch baselines, side by side on one card in one process (ada_mk.bench).

    adamk-bench --config llama3-8b --config llama3.2-1b --context 512 4096     (on the GPU machine)
    adamk-bench --build-only --config ... --context ...     (here, no GPU: prebuild the MegaKernels)
    adamk-bench readme                (README's speed table from benchmarks/results/*.json)

benchmarks/README.md says how to run it on the lent GPU machine.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import click

from ..bench.report import DEFAULT_SYSTEMS, SYSTEMS, Row, append_results, markdown_section, plot, write_json
from ..provenance import git_commit
from .common import HELP, OneLineErrors, say

if TYPE_CHECKING:
    from ..bench.spec import Spec

PROG = "adamk-bench"
ROOT = Path(__file__).resolve().parents[2]
TABLES = "benchmarks/results/TABLES.md"
MULTI_VALUE = {"--context"}  # options that take several values after one flag: --context 512 4096


def _split(values: Iterable[Any]) -> list[str]:
    return [v.strip() for x in values or [] for v in str(x).split(",") if v.strip()]


def resolve_config(name: str) -> Path:
    """A path, or a bare name looked up as configs/<name>.yaml, else configs/<name>.json (an HF
    config.json as published), here, then in the checkout."""
    for p in (Path(name), *(base / "configs" / f"{name}.{ext}" for ext in ("yaml", "json") for base in (Path(), ROOT)),
              ROOT / name):
        if p.is_file():
            return p
    raise click.BadParameter(f"{name!r} not found (a path, or a name under configs/)", param_hint="--config")


class BenchCommand(OneLineErrors):
    """adamk-bench's options, and `--context 512 4096` read as `--context 512 --context 4096`."""

    prog = PROG

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        if args[:1] == ["readme"]:  # adamk-bench readme: its own command
            from .bench_readme import main as readme_main

            return readme_main.main(args[1:], None, complete_var, standalone_mode, **extra)
        return super().main(args, prog_name, complete_var, standalone_mode, **extra)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        out: list[str] = []
        multi, given = None, False  # the multi-value flag being read, and whether it has a value yet
        for a in args:
            if multi is not None and not a.startswith("-"):
                out += [multi, a]
                given = True
                continue
            if multi is not None and not given:
                raise click.BadOptionUsage(multi, f"{multi} needs at least one value", ctx)
            multi, given = (a, False) if a in MULTI_VALUE else (None, False)
            if multi is None:
                out.append(a)
        if multi is not None and not given:
            raise click.BadOptionUsage(multi, f"{multi} needs at least one value", ctx)
        return super().parse_args(ctx, out)


@click.command(cls=BenchCommand, context_settings=HELP)
@click.option("--config", "configs", multiple=True, required=True, metavar="CONFIG",
              help="configs/x.yaml or a name under configs/ (repeatable, or a comma list).")
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences per decode step.")
@click.option("--context", "contexts", multiple=True, metavar="N",
              help="Tokens in the KV cache while timing (several after one flag, repeatable, or a comma "
                   "list).  [default: 512]")
@click.option("--steps", type=int, default=128, show_default=True, help="Decode steps per timing window.")
@click.option("--windows", type=int, default=5, show_default=True, help="Timing windows; the median is reported.")
@click.option("--warmup", type=int, default=8, show_default=True, help="Untimed steps before timing.")
@click.option("--systems", default=",".join(DEFAULT_SYSTEMS), show_default=True,
              help=f"Comma list of the systems to time, among {', '.join(SYSTEMS)} (compile-int8, "
                   "compile-fp8, compile-int4: the compile-flex decoder with 8-bit or int4 (tinygemm, CUDA) "
                   "weight-only linears; opt-in).")
@click.option("--weights-format", "weights", default=None, metavar="FORMAT",
              help="The MegaKernel's weights format for its rows: bf16, fp8, int8, int4 (the compile-int8/fp8"
                   " systems keep theirs). [default: the config's deploy.weights, else bf16]")
@click.option("--weights-group", "weights_group", type=int, default=None, metavar="N",
              help="The MegaKernel's scale group: 0 (per row) or a multiple of 32; int4: 32, 64 or 128."
                   " [default: per format]")
@click.option("--gpu-plan", default="auto", show_default=True,
              help="The GPU the MegaKernel is planned for; auto: the card's own entry, then H100.")
@click.option("--planner", type=click.Choice(["gen", "simple", "search"]), default="gen", show_default=True,
              help="gen: the plan adamk-gen emits; simple: round-robin; search: search_plan.")
@click.option("--arch", default="sm_90a", show_default=True, help="nvcc arch of the MegaKernel build.")
@click.option("--results", default=TABLES, show_default=True,
              help="Markdown file the run's table section is appended to.")
@click.option("--plot-dir", default="benchmarks/plots", show_default=True, help="Where the PNGs go.")
@click.option("--out-json", default=None,
              help="The raw numbers.  [default: benchmarks/results/bench-<time>.json]")
@click.option("--out-dir", default=None,
              help="Also copy this run's section.md, JSON and PNGs here (e.g. $OUT on the GPU machine).")
@click.option("--seed", type=int, default=None, help="Replay a run's random weights and inputs.")
@click.option("--no-check", is_flag=True, help="Time systems whose logits differ from HF eager.")
@click.option("--per-context-compile", is_flag=True,
              help="Size the compiled models' caches per context (one compile each) instead of once.")
@click.option("--no-coordinate-descent", is_flag=True,
              help="Skip inductor's coordinate-descent tuning (gpt-fast enables it; faster compiles).")
@click.option("--mk-fill", type=click.Choice(["random", "decode"]), default="random", show_default=True,
              help="Fill the MegaKernel's KV cache with random K/V or by decoding from position 0.")
@click.option("--bw-gb", type=float, default=4.0, show_default=True, help="GB read by the bandwidth measurement.")
@click.option("--build-only", is_flag=True,
              help="Only build (or find in $ADAMK_CACHE) the MegaKernels this run would load; no GPU needed.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu: a smoke run of the harness itself (no MegaKernel, meaningless times).")
@click.option("--compile-backend", default=None, hidden=True)  # tests: aot_eager
def main(**opts: Any) -> int:
    """Time the MegaKernel of each CONFIG against torch.compile and HF eager on this machine's
    GPU, at each context, in one process; append the table to --results, write the JSON and plots.

    With --build-only, build the MegaKernels such a run loads (needs nvcc, no GPU).
    `adamk-bench readme` rewrites README's speed table from the recorded runs (see its --help);
    benchmarks/README.md says how to run on a lent GPU machine.

    \b
    Examples:
      adamk-bench --config llama3-8b --config llama3.2-1b --context 512 4096
      adamk-bench --config llama3.2-1b --batch 8 --systems megakernel,compile-flex
      adamk-bench --config llama3-8b --systems megakernel,compile-flex,compile-int8,compile-fp8
      ADAMK_CACHE=.devbuild adamk-bench --build-only --config llama3-8b --context 512 4096
      adamk-bench readme
    """
    return bench(opts, click.get_current_context().meta["argv"])


def spec_from_options(opts: dict[str, Any]) -> Spec:
    """The harness's Spec from the parsed options; click.BadParameter for values out of range."""
    from ..bench.spec import Spec

    systems = tuple(_split([opts["systems"]]))
    bad = [x for x in systems if x not in SYSTEMS]
    if bad or not systems:
        raise click.BadParameter(f"{opts['systems']!r}: expected a comma list of {', '.join(SYSTEMS)}",
                                 param_hint="--systems")
    try:
        contexts = sorted({int(c) for c in _split(opts["contexts"] or ["512"])})
    except ValueError:
        raise click.BadParameter(f"{' '.join(opts['contexts'])}: expected integers", param_hint="--context") from None
    if (not contexts or min(contexts) < 1 or opts["batch"] < 1 or opts["steps"] < 1 or opts["windows"] < 1
            or opts["warmup"] < 0):
        raise click.UsageError("--context, --batch, --steps and --windows must be positive")
    from ..config import ConfigError, resolve_weights

    if opts.get("weights") is not None or opts.get("weights_group") is not None:
        try:
            resolve_weights(opts.get("weights"), opts.get("weights_group"))
        except ConfigError as e:
            raise click.UsageError(str(e)) from None
    return Spec(configs=[resolve_config(c) for c in _split(opts["configs"])], batch=opts["batch"],
                contexts=contexts, steps=opts["steps"], windows=opts["windows"], warmup=opts["warmup"],
                systems=systems, gpu_plan=opts["gpu_plan"], planner=opts["planner"], arch=opts["arch"],
                check=not opts["no_check"], seed=opts["seed"], per_context_compile=opts["per_context_compile"],
                coordinate_descent=not opts["no_coordinate_descent"], mk_fill=opts["mk_fill"],
                bw_gb=opts["bw_gb"], device=opts["device"], compile_backend=opts["compile_backend"],
                weights=opts.get("weights"), weights_group=opts.get("weights_group"))


def bench(opts: dict[str, Any], argv: list[str]) -> int:
    """What adamk-bench does with its parsed options; returns the exit status (130: cut off)."""
    spec = spec_from_options(opts)
    t_start = time.time()

    def log(msg: str) -> None:
        say(PROG, f"[{time.time() - t_start:6.1f}s] {msg}")

    if opts["build_only"]:
        from ..bench.spec import build_only

        build_only(spec, log)
        return 0

    from ..bench.harness import run

    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "batch": spec.batch,
            "contexts": spec.contexts, "steps": spec.steps, "windows": spec.windows, "warmup": spec.warmup,
            "systems": list(spec.systems), "configs": [str(c) for c in spec.configs], "argv": argv}
    json_path = Path(opts["out_json"] or f"benchmarks/results/bench-{now.strftime('%Y%m%d-%H%M%S')}.json")
    rows: list[Row] = []

    def on_row(r: Row) -> None:
        rows.append(r)
        write_json(json_path, meta, rows)  # after every row: a run cut off keeps what it measured

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old_handler = signal.signal(signal.SIGTERM, on_term)
    status = 0
    try:
        run(spec, log, on_row, meta)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): reporting the {len(rows)} rows measured so far")
        meta["interrupted"] = True
        status = 130
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        if "card" in meta:
            meta["elapsed_s"] = time.time() - t_start
            section = markdown_section(meta, rows)
            if meta.get("interrupted"):
                section = section.replace("\n\n", "\n\n(run cut off before it finished)\n\n", 1)
            append_results(opts["results"], section)
            write_json(json_path, meta, rows)
            pngs = plot(rows, opts["plot_dir"], meta["card"]) if rows else []
            click.echo("\n" + section)
            log(f"appended to {opts['results']}; JSON {json_path}; plots {[str(p) for p in pngs]}")
            if opts["out_dir"]:
                out = Path(opts["out_dir"])
                (out / "plots").mkdir(parents=True, exist_ok=True)
                (out / "section.md").write_text(section)
                for src, dst in [(json_path, out / json_path.name)] + [(png, out / "plots" / png.name) for png in pngs]:
                    if Path(src).resolve() != Path(dst).resolve():
                        shutil.copy(src, dst)
                log(f"copied section.md, {json_path.name} and the plots to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
