"""adamk-bench: ms/token, tokens/s, achieved GB/s and fraction of the measured read bandwidth of the
MegaKernel and PyTorch baselines, side by side on one card in one process.

    adamk-bench --config configs/llama3-8b.yaml --config configs/llama3.2-1b.yaml --context 512 4096
    adamk-bench --build-only --config ... --context ...     (here, no GPU: prebuild the MegaKernels)

See benchmarks/README.md for running it on the lent GPU machine.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import signal
import sys
import time
from pathlib import Path

from ..provenance import git_commit
from .report import SYSTEMS, Row, append_results, markdown_section, plot, write_json

ROOT = Path(__file__).resolve().parents[2]


def _split(values) -> list[str]:
    return [v.strip() for x in values or [] for v in str(x).split(",") if v.strip()]


def resolve_config(name: str) -> Path:
    """A path, or a bare name looked up as configs/<name>.yaml (here, then in the checkout)."""
    for p in (Path(name), Path("configs") / f"{name}.yaml", ROOT / "configs" / f"{name}.yaml",
              ROOT / name):
        if p.is_file():
            return p
    raise SystemExit(f"adamk-bench: config {name!r} not found (a path, or a name under configs/)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamk-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True,
                   help="configs/x.yaml or a name under configs/ (repeatable, or a comma list)")
    p.add_argument("--batch", type=int, default=1, help="sequences per decode step (default 1)")
    p.add_argument("--context", action="extend", nargs="+", default=None,
                   help="tokens in the KV cache while timing (repeatable / several / comma list; default 512)")
    p.add_argument("--steps", type=int, default=128, help="decode steps per timing window (default 128)")
    p.add_argument("--windows", type=int, default=5, help="timing windows; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before timing (default 8)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma list of {', '.join(SYSTEMS)} (default all)")
    p.add_argument("--gpu-plan", default="auto",
                   help="the GPU the MegaKernel is planned for (default auto: the card's own entry, then H100)")
    p.add_argument("--planner", choices=("gen", "simple", "search"), default="gen",
                   help="gen: the plan adamk-gen emits (default); simple: round-robin; search: search_plan")
    p.add_argument("--arch", default="sm_90a", help="nvcc arch of the MegaKernel build (default sm_90a)")
    p.add_argument("--results", default="benchmarks/RESULTS.md", help="markdown file to append the run's section to")
    p.add_argument("--plot-dir", default="benchmarks/plots", help="where the PNGs go")
    p.add_argument("--out-json", default=None, help="raw numbers (default benchmarks/results/bench-<time>.json)")
    p.add_argument("--out-dir", default=None,
                   help="also copy this run's section.md, JSON and PNGs here (e.g. $OUT on the GPU machine)")
    p.add_argument("--seed", type=int, default=None, help="replay a run's random weights and inputs")
    p.add_argument("--no-check", action="store_true", help="time systems whose logits differ from HF eager")
    p.add_argument("--per-context-compile", action="store_true",
                   help="size the compiled models' caches per context (one compile each) instead of once")
    p.add_argument("--no-coordinate-descent", action="store_true",
                   help="skip inductor's coordinate-descent tuning (gpt-fast enables it; faster compiles)")
    p.add_argument("--mk-fill", choices=("random", "decode"), default="random",
                   help="fill the MegaKernel's KV cache with random K/V (default) or by decoding from 0")
    p.add_argument("--bw-gb", type=float, default=4.0, help="GB read by the bandwidth measurement (default 4)")
    p.add_argument("--build-only", action="store_true",
                   help="only build (or find in $ADAMK_CACHE) the MegaKernels this run would load; no GPU needed")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default); cpu: a smoke run of the harness itself (no MegaKernel, meaningless times)")
    p.add_argument("--compile-backend", default=None, help=argparse.SUPPRESS)  # tests: aot_eager
    return p


def spec_from_args(a: argparse.Namespace):
    from .harness import Spec

    systems = tuple(_split([a.systems]))
    bad = [x for x in systems if x not in SYSTEMS]
    if bad or not systems:
        raise SystemExit(f"adamk-bench: --systems {a.systems!r}: expected a comma list of {', '.join(SYSTEMS)}")
    try:
        contexts = sorted({int(c) for c in _split(a.context or ["512"])})
    except ValueError:
        raise SystemExit(f"adamk-bench: --context {a.context}: expected integers") from None
    if not contexts or min(contexts) < 1 or a.batch < 1 or a.steps < 1 or a.windows < 1 or a.warmup < 0:
        raise SystemExit("adamk-bench: --context, --batch, --steps and --windows must be positive")
    return Spec(configs=[resolve_config(c) for c in _split(a.config)], batch=a.batch, contexts=contexts,
                steps=a.steps, windows=a.windows, warmup=a.warmup, systems=systems, gpu_plan=a.gpu_plan,
                planner=a.planner, arch=a.arch, check=not a.no_check, seed=a.seed,
                per_context_compile=a.per_context_compile, coordinate_descent=not a.no_coordinate_descent,
                mk_fill=a.mk_fill, bw_gb=a.bw_gb, device=a.device, compile_backend=a.compile_backend)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    spec = spec_from_args(a)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    if a.build_only:
        from .harness import build_only

        build_only(spec, log)
        return 0

    from .harness import run

    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "batch": spec.batch,
            "contexts": spec.contexts, "steps": spec.steps, "windows": spec.windows, "warmup": spec.warmup,
            "systems": list(spec.systems), "configs": [str(c) for c in spec.configs],
            "argv": sys.argv[1:] if argv is None else argv}
    json_path = Path(a.out_json or f"benchmarks/results/bench-{now.strftime('%Y%m%d-%H%M%S')}.json")
    rows: list[Row] = []

    def on_row(r: Row) -> None:
        rows.append(r)
        write_json(json_path, meta, rows)  # after every row: a run cut off keeps what it measured

    def on_term(signum, frame):
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
            append_results(a.results, section)
            write_json(json_path, meta, rows)
            pngs = plot(rows, a.plot_dir, meta["card"]) if rows else []
            print("\n" + section, flush=True)
            log(f"appended to {a.results}; JSON {json_path}; plots {[str(p) for p in pngs]}")
            if a.out_dir:
                out = Path(a.out_dir)
                (out / "plots").mkdir(parents=True, exist_ok=True)
                (out / "section.md").write_text(section)
                for src, dst in [(json_path, out / json_path.name)] + [(png, out / "plots" / png.name) for png in pngs]:
                    if Path(src).resolve() != Path(dst).resolve():
                        shutil.copy(src, dst)
                log(f"copied section.md, {json_path.name} and the plots to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
