"""Jinja2 templates for job scripts and reports; loaded through importlib.resources (so they
load from a sweep's code snapshot, a zip file, as from the checkout).

`environment()` is the one script environment (shell quoting filter `q`, strict undefined
variables): the sweep scripts (jobs.scripts) and the submitit LSF plugin render through it.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from importlib.resources import files
from typing import Any


def loader() -> Any:
    """The jinja2 loader of this package's templates, wherever the package lies."""
    import jinja2

    def source(name: str) -> str | None:
        path = files("templates").joinpath(name)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return jinja2.FunctionLoader(source)


@lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=loader(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def render(name: str, **values: Any) -> str:
    """The script template `name` rendered with `values`."""
    return environment().get_template(name).render(**values)
