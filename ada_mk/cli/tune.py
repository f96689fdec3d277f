"""`adamk-tune`: build the plans the cost model predicts fastest, time them on this machine's GPU,
keep the fastest (the logic is ada_mk.tuning).

    adamk-tune --config configs/llama3.2-1b.yaml --gpu H100 --candidates 4
    ADAMK_CACHE=.devbuild adamk-tune --config configs/llama3.2-1b.yaml --build-only   # no GPU here
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click

from ..config import MAX_BATCH, ConfigError
from ..config.gpus import known_gpus_text
from .common import check_arch, command, fail_as, say, weights_options

PROG = "adamk-tune"
log = partial(say, PROG)
fail = partial(fail_as, PROG)


@command(PROG)
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Model config: one of configs/*.yaml, or an HF config.json. (Required unless --calibrate.)")
@click.option("--gpu", default=None, metavar="NAME",
              help=f"Target GPU the plans are made for: {known_gpus_text()}. [default: the config's deploy.gpu, else H100]")
@click.option("--batch", type=int, default=None, metavar="N", help=f"Sequences decoded together, 1..{MAX_BATCH}. [default: 1]")
@click.option("--max-context", type=int, default=None, metavar="N",
              help="Positions the KV cache holds (as for adamk-gen). [default: min(4096, max_position_embeddings)]")
@click.option("--context", type=click.IntRange(1), default=512, show_default=True, metavar="N",
              help="Sequence length the steps are timed at (the KV cache is filled up to it).")
@click.option("--candidates", "n", type=click.IntRange(1, 16), default=4, show_default=True, metavar="N",
              help="How many of the best predicted plans to build and time.")
@click.option("--baseline", is_flag=True, help="Also time the round-robin plan (make_plan's baseline).")
@click.option("--steps", type=click.IntRange(1), default=64, show_default=True, metavar="N",
              help="Chained decode steps in one timed window.")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True, metavar="N",
              help="Windows per candidate, taken in turns with the other candidates; the median counts.")
@click.option("--min-gain", type=click.FloatRange(0), default=1.0, show_default=True, metavar="PCT",
              help="Keep the plan adamk-gen compiles unless another is measured at least PCT% faster.")
@weights_options("every candidate")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output root; the winner goes to OUT/<model>/<gpu>-bs<batch>/ as adamk-gen writes it.")
@click.option("--arch", "archs", multiple=True, metavar="SM", callback=check_arch,
              help="Also compile for this architecture (repeatable), e.g. sm_90a to time an Ada plan on "
                   "Hopper. The target GPU's own architecture is always included.")
@click.option("--build-only", "--no-measure", "build_only", is_flag=True,
              help="Build the candidates into the build cache ($ADAMK_CACHE) and stop: for a machine "
                   "with nvcc but no GPU.")
@click.option("--calibrate", "profiles", multiple=True, type=click.Path(path_type=Path), metavar="PROFILE",
              help="Instead of tuning: fit the cost model's constants for one card to these profiles "
                   "(profile.npz of benchmarks/profile_step.py, repeatable) and write them to "
                   "ada_mk/search/calibration/<GPU>.json, which the search then uses for that GPU.")
def main(config_path: Path | None, gpu: str | None, batch: int | None, max_context: int | None, context: int,
         n: int, baseline: bool, steps: int, rounds: int, min_gain: float, weights: str | None,
         weights_group: int | None, out_dir: Path,
         archs: tuple[str, ...], build_only: bool, profiles: tuple[Path, ...]) -> None:
    """Build the --candidates plans the cost model predicts fastest for the model of --config on
    --gpu at --batch, time them on this machine's GPU and write the fastest, as adamk-gen would,
    with tune.json (card, date, commit, every candidate's predicted and measured time) beside it.

    \b
    Examples:
      adamk-tune --config configs/llama3.2-1b.yaml --gpu H100 --candidates 4 --out-dir tuned
      ADAMK_CACHE=.devbuild adamk-tune --config configs/llama3.2-1b.yaml --build-only  # no GPU here
      adamk-tune --calibrate profile-llama3.2-1b-search.npz --calibrate profile-llama3-8b-search.npz
    """
    if profiles:
        calibrate(profiles)
        return
    if config_path is None:
        fail("--config: required (the model to tune), unless --calibrate is given")
    from ..tuning import TuneError, tune

    try:
        tune(config_path, gpu=gpu, batch=batch, max_context=max_context, n=n, context=context, steps=steps,
             rounds=rounds, min_gain=min_gain / 100, archs=archs, baseline=baseline, out_dir=out_dir,
             build_only=build_only, log=log, show=click.echo, weights=weights, weights_group=weights_group)
    except (ConfigError, TuneError) as e:
        fail(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}cannot write output: {e.strerror or e}")


def calibrate(profiles: tuple[Path, ...]) -> None:
    """Fit one card's cost constants to the profiles and write them where constants_for reads them."""
    import datetime

    from ..search.calibrate import (CalibrationError, calibration_path, fit_constants, predicted_vs_measured,
                                    profiled_step, save_calibration)
    from ..search.cost import constants_for

    try:
        steps = [profiled_step(p) for p in profiles]
        gpus = {s.plan.deploy.gpu.name for s in steps}
        if len(gpus) > 1:
            raise CalibrationError(f"--calibrate: profiles of plans for several GPUs ({', '.join(sorted(gpus))})")
        base = constants_for(steps[0].plan.deploy.gpu)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        fitted = fit_constants(steps, base, date=date, log=log)
        for s in steps:
            (p0, m), (p1, _) = predicted_vs_measured(s, base), predicted_vs_measured(s, fitted)
            log(f"{s.label}: measured {m:,.1f} us; predicted {p0:,.1f} us ({p0 / m - 1:+.1%}) before, "
                f"{p1:,.1f} us ({p1 / m - 1:+.1%}) fitted")
        path = calibration_path(fitted.gpu)
        save_calibration(fitted, steps, path, date=date,
                         commit=next((s.measured.meta.get("commit", "") for s in steps), ""))
        log(f"wrote {path}")
    except CalibrationError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or 'calibration'}: cannot write: {e.strerror or e}")


if __name__ == "__main__":
    sys.exit(main())
