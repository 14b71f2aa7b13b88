"""The ``save-search`` command line: thin commands over the library's functions, one module per area."""

from __future__ import annotations

import sys

from app.cli import admin, collection, model, videos  # noqa: F401 - importing registers the commands
from app.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

