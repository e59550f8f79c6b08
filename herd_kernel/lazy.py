"""``lazy("psutil")``: a stand-in for a module that imports it on first attribute access;
``lazy("zeroconf", "IPVersion")``: the same for one name in it (called or read through).

Every installed plugin loads in every Herd process, and the router loads node-side plugins too
(``herd`` may host a local node agent). A plugin whose heavy dependency only its node side uses
writes ``psutil = lazy("psutil")`` instead of ``import psutil``, and a router that runs no agent
never pays for it (psutil alone is about 3.6 MB of resident memory).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r}, {state}>"


class LazyName:
    def __init__(self, module: str, name: str) -> None:
        self._where = LazyModule(module)
        self._name = name

    def _target(self) -> Any:
        return getattr(self._where, self._name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._target(), attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self._where._name}.{self._name}>"


def lazy(module: str, name: str | None = None) -> Any:
    return LazyModule(module) if name is None else LazyName(module, name)
