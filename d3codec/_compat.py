"""d3codec 0.1's flat module paths, kept working for one release (CHANGELOG.md lists them).

``import d3codec.container`` gives :mod:`d3codec.format.container` itself (the same module object, so its
names, private ones included, and any monkeypatching carry over) with a DeprecationWarning; a module that
was split gives a read-only view of the names it held. Nothing inside d3codec imports an old path
(tests/test_layout.py checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

# old path → new path (a module moved whole), or old path → the modules its names went to (a split module)
MOVED: dict[str, str | tuple[str, ...]] = {
    "d3codec.progress": "d3codec.util.progress",
    "d3codec.runtime": "d3codec.util.runtime",
    "d3codec.container": "d3codec.format.container",
    "d3codec.text": "d3codec.format.text",
    "d3codec.limits": "d3codec.format.limits",
    "d3codec.noise": "d3codec.format.noise",
    "d3codec.weights": "d3codec.format.weights",
    "d3codec.storage": "d3codec.format.storage",
    "d3codec.archive": "d3codec.format.meta",
    "d3codec.models": "d3codec.nn.models",
    "d3codec.augment": "d3codec.nn.augment",
    "d3codec.losses": "d3codec.nn.losses",
    "d3codec.teacher": "d3codec.nn.teacher",
    "d3codec.experts": "d3codec.nn.experts",
    "d3codec.schedule": "d3codec.nn.schedule",
    "d3codec.dataset": "d3codec.decode.dataset",
    "d3codec.expand": "d3codec.decode.expand",
    "d3codec.verify": "d3codec.decode.verify",
    "d3codec.checkpoint": "d3codec.encode.checkpoint",
    "d3codec.seeds": "d3codec.encode.seeds",
    "d3codec.federated": "d3codec.encode.federated",
    "d3codec.defaults": "d3codec.encode.defaults",
    "d3codec.encoding": "d3codec.encode.pipeline",
    "d3codec.ranking": "d3codec.evaluation.ranking",
    "d3codec.students": ("d3codec.evaluation.students", "d3codec.nn.accuracy"),
    "d3codec.methods.base": ("d3codec.encode.interface", "d3codec.decode.sampler"),
    "d3codec.budget": ("d3codec.format.accounting", "d3codec.methods.pixel.plan"),
    "d3codec.labeller": ("d3codec.decode.labeller", "d3codec.encode.labelled"),
}


class SplitModule(types.ModuleType):
    """What a split module's old path gives: each name looked up in the modules it went to, in order."""

    def __init__(self, name: str, homes: tuple[str, ...]):
        super().__init__(name, f"d3codec 0.1's {name}, now split across {', '.join(homes)}")
        self._homes = homes

    def __getattr__(self, attribute: str):
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._homes)}) has no {attribute!r}")


class OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of MOVED and loads each as its new module (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}  # by old path: each new module's own spec

    def create_module(self, spec):
        home = MOVED[spec.name]
        shown = home if isinstance(home, str) else ", ".join(home)
        warnings.warn(
            f"{spec.name} has moved to {shown}; the old path goes in the next release (CHANGELOG.md)",
            DeprecationWarning,
            stacklevel=2,
        )  # the importer's line: warn skips importlib's own frames
        if not isinstance(home, str):
            return SplitModule(spec.name, home)
        module = importlib.import_module(home)
        self._specs[spec.name] = module.__spec__  # the import machinery stamps the old path's spec on it
        return module

    def exec_module(self, module):
        if not isinstance(module, SplitModule):
            module.__spec__ = self._specs.pop(module.__spec__.name)  # stamped with the old path's: its own back


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (d3codec/__init__ does)."""
    if not any(isinstance(finder, OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(OldPaths())


def old_attribute(name: str):
    """``d3codec.<name>`` for an old top-level module name (d3codec.__getattr__), else AttributeError."""
    if f"d3codec.{name}" in MOVED:
        return importlib.import_module(f"d3codec.{name}")
    raise AttributeError(f"module 'd3codec' has no attribute {name!r}")
