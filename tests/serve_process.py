"""`adamk-serve` started as a process for a test (tests/test_serve_smollm2.py, tests/gpu/test_serve_gpu.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start_server(path: Path, *args: str) -> tuple[subprocess.Popen, int, list[str]]:
    """adamk-serve on a free port (`args`: its other flags); its stderr lines collect in the
    returned list."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "ada_mk.cli.serve", "--weights", str(path), *args, "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    port = None
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.wait(10)
        pytest.fail("adamk-serve did not start: " + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, port, lines
