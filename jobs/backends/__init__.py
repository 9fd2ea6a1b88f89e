"""The backends, registered in one place: `sweep launch --backend` offers exactly these.

Each is one module implementing jobs.backends.base.Backend. Adding a scheduler (PBS, say) is
one module (jobs/backends/pbs.py, a Backend subclass) plus one line here — or, from another
package, an entry point in the group `quantsweep.backends` naming the class, as submitit finds
its executor plugins. Loading is lazy: `sweep status` on a SLURM sweep imports no LSF code.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from jobs.backends.base import Backend

REGISTRY: dict[str, str] = {
    "local": "jobs.backends.local:LocalBackend",
    "lsf": "jobs.backends.lsf:LsfBackend",
    "slurm": "jobs.backends.slurm:SlurmBackend",
}
ENTRY_POINT_GROUP = "quantsweep.backends"
_loaded: dict[str, Backend] = {}


def _plugins() -> dict[str, str]:
    try:
        return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken third-party distribution must not break the CLI
        return {}


def names() -> list[str]:
    """Every backend's name, ours first."""
    return list(REGISTRY) + sorted(set(_plugins()) - set(REGISTRY))


def get(name: str) -> Backend:
    if name not in _loaded:
        where = REGISTRY.get(name) or _plugins().get(name)
        if where is None:
            raise KeyError(name)
        module, _, cls = where.partition(":")
        _loaded[name] = getattr(import_module(module), cls)()
    return _loaded[name]


def schedulers() -> list[str]:
    """The backends that submit to a scheduler (not `local`)."""
    return [n for n in names() if get(n).scheduler]
