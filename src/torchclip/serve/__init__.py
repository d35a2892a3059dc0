"""``torchclip serve``: a local web app and JSON API over an index (see ``app.py`` for the routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "app": ("ServeConfig", "create_server", "serve_in_thread"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .app import ServeConfig as ServeConfig
    from .app import create_server as create_server
    from .app import serve_in_thread as serve_in_thread
