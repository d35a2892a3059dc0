"""``torchclip serve``: the command line over :mod:`torchclip.serve.app` (the routes are described there).

    torchclip serve idx/ --port 8000
"""

from __future__ import annotations

import argparse

from ..cli import CommandParser, command
from ..search.cli_search import add_searcher_arguments, open_searcher

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip serve", description="Web app and JSON API over an index "
                      "(binds 127.0.0.1 only).")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free port)")
    p.add_argument("--root", help="folder the indexed files live in (default: the one recorded in the index)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload (default 8 MB)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    add_searcher_arguments(p, "uploads")
    return p


def _serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .app import ServeConfig, create_server

    searcher = open_searcher(args)
    config = ServeConfig(max_upload_bytes=int(args.max_upload_mb * (1 << 20)), root=args.root)
    server = create_server(searcher, args.port, config, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"serving {len(searcher.index)} items on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


main = command("torchclip serve", _serve)


if __name__ == "__main__":
    raise SystemExit(main())
