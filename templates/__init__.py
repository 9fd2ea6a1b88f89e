"""Jinja2 templates for job scripts and reports; loaded through importlib.resources.

`environment()` is the one script environment (shell quoting filter `q`, strict undefined
variables): the sweep scripts (jobs.scripts) and the submitit LSF plugin render through it.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from importlib.resources import files
from typing import Any


@lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def render(name: str, **values: Any) -> str:
    """The script template `name` rendered with `values`."""
    return environment().get_template(name).render(**values)
