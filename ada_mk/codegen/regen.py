"""The generated kernels checked in under out/ for code review, and how to rewrite them.

    python -m ada_mk.codegen.regen            # rewrite every checked-in kernel
    python -m ada_mk.codegen.regen --check    # exit 1, naming them, if any is stale

Each is exactly what `adamk-gen --config configs/<config>.yaml --gpu <gpu> --batch <batch>
--weights-format <format> --no-build` writes (the same code path: ada_mk.cli.gen.generate); tests/test_generated_kernels.py
fails while any of them differs from a fresh generation.
"""
from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

# (config under configs/, GPU, batch, weights format at its default group)
KERNELS: tuple[tuple[str, str, int, str], ...] = (
    ("llama3-8b", "L20", 1, "bf16"),
    ("llama3-8b", "H100", 1, "bf16"),
    ("llama3.2-1b", "H100", 1, "bf16"),
    ("llama3-8b", "H100", 1, "fp8"),
    ("llama3.2-1b", "H100", 1, "int8"),
)

# What a --no-build generation writes; other files in a kernel directory (a fatbin or library
# from a local build, explain output) are not checked in and are left alone.
GENERATED_SUFFIXES = (".json", ".cu", ".inc", ".h")
# Measurements kept beside a kernel (adamk-tune's record of the plans it timed on a GPU): checked
# in, but not generated, so regeneration neither compares nor removes them.
MEASURED = ("tune.json",)

COMMAND = "python -m ada_mk.codegen.regen"


def repo_root() -> Path:
    """The checkout this package runs from (an editable install), else the current directory."""
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        if (root / "configs").is_dir():
            return root
    raise SystemExit(f"{COMMAND}: no configs/ beside {here} or in {Path.cwd()}: run it from the repository")


def kernel_dir(out_root: Path, config: str, gpu: str, batch: int, weights: str = "bf16",
               root: Path | None = None) -> Path:
    """Where the kernel of (config, gpu, batch, weights) goes under out_root."""
    from ..cli.gen import output_dir_name
    from ..config import load_config

    model, deploy = load_config((root or repo_root()) / "configs" / f"{config}.yaml", gpu=gpu, batch=batch,
                                weights=weights)
    return out_root / model.name / output_dir_name(deploy)


def generate(config: str, gpu: str, batch: int, weights: str, out_root: Path, root: Path | None = None,
             log=lambda msg: None) -> Path:
    """Generate one kernel's sources under out_root as the CLI does; returns its directory."""
    from ..cli.gen import generate as cli_generate

    path = (root or repo_root()) / "configs" / f"{config}.yaml"
    target = cli_generate(path, gpu, batch, None, None, out_root, build=False, log=log, weights=weights)
    assert target is not None
    return target


def generated_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if p.is_file() and p.name.endswith(GENERATED_SUFFIXES) and p.name not in MEASURED)


def differences(checked_in: Path, fresh: Path) -> list[str]:
    """What differs between a checked-in kernel directory and a fresh generation ([] if none)."""
    want, have = generated_files(fresh), generated_files(checked_in)
    out = [f"missing {n}" for n in want if n not in have]
    out += [f"left over {n} (no longer generated)" for n in have if n not in want]
    out += [f"{n} differs" for n in want if n in have and not filecmp.cmp(checked_in / n, fresh / n, shallow=False)]
    return out


def stale(root: Path | None = None, scratch: Path | None = None) -> dict[str, list[str]]:
    """{kernel directory (relative to root): differences} for every checked-in kernel that is stale."""
    root = root or repo_root()
    result: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="adamk-regen-", dir=scratch) as tmp:
        for config, gpu, batch, weights in KERNELS:
            fresh = generate(config, gpu, batch, weights, Path(tmp), root)
            rel = fresh.relative_to(tmp)
            diff = differences(root / "out" / rel, fresh)
            if diff:
                result[f"out/{rel.as_posix()}"] = diff
    return result


def regenerate(root: Path | None = None, log=print) -> list[Path]:
    """Rewrite every checked-in kernel's sources; drop generated files no longer produced."""
    root = root or repo_root()
    written = []
    with tempfile.TemporaryDirectory(prefix="adamk-regen-") as tmp:
        for config, gpu, batch, weights in KERNELS:
            fresh = generate(config, gpu, batch, weights, Path(tmp), root)
            target = root / "out" / fresh.relative_to(tmp)
            target.mkdir(parents=True, exist_ok=True)
            keep = set(generated_files(fresh))
            for name in generated_files(target):
                if name not in keep:
                    (target / name).unlink()
            for name in sorted(keep):
                if not (target / name).exists() or not filecmp.cmp(fresh / name, target / name, shallow=False):
                    shutil.copyfile(fresh / name, target / name)
            log(f"{target.relative_to(root)}: {', '.join(sorted(keep))}")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--check"]):
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    if argv == ["--check"]:
        bad = stale()
        for rel, diff in bad.items():
            print(f"{rel} is stale: {'; '.join(diff)}", file=sys.stderr)
        if bad:
            print(f"run `{COMMAND}`", file=sys.stderr)
        return 1 if bad else 0
    regenerate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
