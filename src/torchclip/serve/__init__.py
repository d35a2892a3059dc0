"""``torchclip serve``: a local web app and JSON API over an index (see ``app.py`` for the routes)."""

from .app import ServeConfig, create_server, serve_in_thread

__all__ = ["ServeConfig", "create_server", "serve_in_thread"]
