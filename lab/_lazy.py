"""Lazy re-exports (PEP 562): a package lists what it offers, and each name's module loads on first
use, so `import lab`, the simulator and the HTTP-only commands never load torch or FastAPI they do not
need. A leaf module: it imports nothing from lab.

A re-exported name must not also be a submodule's name: importing the submodule would set the package
attribute to the module, and `from package import name` would then give the module (tests check this).
"""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, names: dict[str, str], namespace: dict):
    """The `__getattr__` and `__dir__` of a package whose `names` map each name to its module."""

    def __getattr__(name: str):
        if name in names:
            value = getattr(import_module(names[name]), name)
            namespace[name] = value  # later lookups skip this function
            return value
        try:  # `import lab.engine; lab.engine.llm`: a submodule, as an eagerly importing package had it
            return import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise  # the submodule exists and failed to import something: that is the error to see
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
