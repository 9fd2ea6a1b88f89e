"""A snapshot of the project's code per sweep: jobs import it first (PYTHONPATH), so editing the
checkout while a sweep is queued changes nothing. Content-addressed: relaunching unchanged code
reuses the snapshot."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

PACKAGES = ("jobs", "quantlib", "analysis", "templates")
SUFFIXES = (".py", ".j2")


def _files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts)


_MADE: dict[Path, Path] = {}  # sweep dir -> its snapshot, once per process (a dry run of
# 10,000 local jobs renders 10,000 scripts: hashing the code for each took 33 s)


def snapshot(sweep_dir: Path) -> Path:
    """The directory to put first on the jobs' PYTHONPATH."""
    key = Path(sweep_dir).absolute()
    if key in _MADE and _MADE[key].is_dir():
        return _MADE[key]
    _MADE[key] = _snapshot(key)
    return _MADE[key]


def _snapshot(sweep_dir: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    files = _files(root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    dest = sweep_dir / "snapshots" / digest.hexdigest()[:12]
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=dest.parent))
    for path in files:
        target = tmp / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    try:
        os.rename(tmp, dest)
    except OSError:  # another launch made the same snapshot meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def pythonpath_line(path: Path) -> str:
    """The shell line that makes a job import the snapshot first, never the working directory
    (`python -m` puts it first on sys.path, and a launch from the checkout would run the
    checkout's code; PYTHONSAFEPATH, Python 3.11+, keeps it off)."""
    import shlex

    return (f"export PYTHONPATH={shlex.quote(str(path))}${{PYTHONPATH:+:$PYTHONPATH}} "
            "PYTHONSAFEPATH=1")
