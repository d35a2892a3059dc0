"""``torchclip serve``: a local web app and JSON API over an index (see ``app.py`` for the routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "ServeConfig": "app",
    "create_server": "app",
    "serve_in_thread": "app",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = ["ServeConfig", "create_server", "serve_in_thread"]

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .app import ServeConfig, create_server, serve_in_thread
