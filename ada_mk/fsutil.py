"""File-system helpers shared by the generator's stages."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes, *, mkdir: bool = True) -> Path:
    """Write `data` (str as UTF-8) to `path` so that readers see the old file or the whole new
    one, never a partial write: write a temporary file in the same directory (same file system,
    so the rename is atomic), fsync it, then os.replace() it over the target.

    Raises OSError on failure; the temporary file is removed.
    """
    target = Path(path)
    if mkdir:
        target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the result the mode a plain open() would have had.
        os.chmod(tmp, _default_mode(target))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def _default_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777  # keep an existing file's mode
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
