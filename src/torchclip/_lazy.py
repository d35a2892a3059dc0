"""Package attributes imported on first use (PEP 562), so importing a package costs nothing until a name
from it is used: ``torchclip --help`` and ``import torchclip`` do not import torch."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any


def attach(package: str, exports: dict[str, tuple[str, ...]]
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``exports``: submodule (relative, e.g. ``"api"``) -> the public names it defines. Returns the
    package's ``__getattr__``, ``__dir__`` and ``__all__`` (the exported names); other submodules resolve as
    attributes too, as they would after an eager import."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        pkg = importlib.import_module(package)
        if module is not None:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(pkg, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(module_of))

    return __getattr__, __dir__, list(module_of)
