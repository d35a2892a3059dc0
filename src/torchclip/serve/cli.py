"""``torchclip serve``: the command line over :mod:`torchclip.serve.app` (the routes are described there).

    torchclip serve idx/ --port 8000
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli import CommandParser, execute
from ..embed.modelspec import add_model_arguments, spec_from_args

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip serve", description="Web app and JSON API over an index "
                      "(binds 127.0.0.1 only).")
    p.add_argument("index", help="index folder written by torchclip index")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free port)")
    p.add_argument("--root", help="folder the indexed files live in (default: the one recorded in the index)")
    p.add_argument("--labels", help="zero-shot label set for uploads (overrides the index's)")
    p.add_argument("--templates", help="prompt templates for the labels")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload (default 8 MB)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    add_model_arguments(p, required=False)
    return p


def _serve(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..search.query import Searcher
    from .app import ServeConfig, create_server

    searcher = Searcher.open(args.index, spec=spec_from_args(args), device=args.device, labels=args.labels,
                             templates=args.templates)
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


def main(argv: Sequence[str] | None = None) -> int:
    return execute("torchclip serve", argv, _serve)


if __name__ == "__main__":
    raise SystemExit(main())
