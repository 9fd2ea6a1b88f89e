"""A snapshot of the project's code per sweep: jobs import it first (PYTHONPATH), so editing the
checkout while a sweep is queued changes nothing. One zip file (Python imports from it, the
templates load through importlib.resources), not a tree of a hundred files: on a parallel file
system each file created costs the metadata server. Content-addressed: relaunching unchanged
code reuses the snapshot."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

PACKAGES = ("jobs", "quantlib", "analysis", "templates")
SUFFIXES = (".py", ".j2")


def _files(root: Path) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts)


_MADE: dict[Path, Path] = {}  # sweep dir -> its snapshot, once per process (a dry run of
# 10,000 local jobs renders 10,000 scripts: hashing the code for each took 33 s)


def snapshot(sweep_dir: Path) -> Path:
    """The zip file to put first on the jobs' PYTHONPATH."""
    key = Path(sweep_dir).absolute()
    if key in _MADE and _MADE[key].is_file():
        return _MADE[key]
    _MADE[key] = _snapshot(key)
    return _MADE[key]


def _snapshot(sweep_dir: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    files = _files(root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    dest = sweep_dir / "snapshots" / f"{digest.hexdigest()[:12]}.zip"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".zip", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, path.relative_to(root).as_posix())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)  # another launch's identical snapshot meanwhile: the same bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def pythonpath_line(path: Path) -> str:
    """The shell line that makes a job import the snapshot first, never the working directory
    (`python -m` puts it first on sys.path, and a launch from the checkout would run the
    checkout's code; PYTHONSAFEPATH, Python 3.11+, keeps it off)."""
    import shlex

    return (f"export PYTHONPATH={shlex.quote(str(path))}${{PYTHONPATH:+:$PYTHONPATH}} "
            "PYTHONSAFEPATH=1")
