"""Reading a JSON object from a file, for every reader of torchclip's own and foreign JSON files.

No torch here: the apps' metadata readers (embeddings, indexes) use it without importing a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["JSONFileError", "read_json_object"]


class JSONFileError(ValueError):
    """A file that does not hold a JSON object. The message is the reason alone; the caller's own error names
    the file and what to do about it."""


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the UTF-8 file ``path``; ``JSONFileError`` when the file holds anything else.

    A missing or unreadable file is not a JSON problem and propagates as the ``OSError`` it is.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JSONFileError(f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise JSONFileError(f"a JSON {type(doc).__name__}, not an object")
    return doc
