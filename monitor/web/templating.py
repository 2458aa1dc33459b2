"""Jinja2 templates and static assets of the dashboard, found next to the package.

A wheel ships them inside the package (`monitor/templates`); a source checkout keeps them at the top.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2
from starlette.templating import Jinja2Templates

_PACKAGE = Path(__file__).resolve().parent.parent


def asset_dir(name: str) -> Path:
    """`templates` or `static`: inside the installed package first, else the source checkout."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"the dashboard's {name}/ directory is missing (looked next to {_PACKAGE})")


@lru_cache(maxsize=1)
def get_templates() -> Jinja2Templates:
    """Built on first use, not at import; autoescape everywhere, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(asset_dir("templates")),
        # Every template renders third-party text (SQL, application names): escape all of it.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)
