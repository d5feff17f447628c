"""One registry shape for every pluggable kind: sources, sinks, backends, output decoders.

A :class:`Registry` maps names to entries (a factory, a class, a decoder) for one package. Each
module of the package registers its own entries when it is imported, and the registry imports
every module of its package (:mod:`pkgutil`) before it is first read, so a new source, sink,
backend or output format is one module in its package (plus its config model, where it has
settings) and nothing else: no list to extend, no ``elif`` to teach.

Entries are listed by ``order`` (then by registration); an unknown name is an error that lists
the known ones. A module that is only a helper of the package (``base.py``, ``cuda.py``) is
imported too, which is harmless: heavy libraries (TensorRT, PyAV, Ray) are imported inside the
entries, never at a module's top.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

T = TypeVar("T")

LAST = 1_000  # the order of an entry that does not say: after every built-in one


class Registry(MutableMapping[str, T], Generic[T]):
    """Named entries of one ``kind`` (for messages), found in the modules of ``package``.

    ``error(message)`` builds the exception an unknown name raises. ``plugins`` names further
    packages whose modules register entries of this kind (by name, not by an import: a package
    that builds on this one, such as ``pipeline.events`` on the sinks, plugs in without a loop).
    The registry is a mapping (``registry[name]``, ``name in registry``, ``del registry[name]``),
    in listing order.
    """

    def __init__(self, kind: str, package: str, error: Callable[[str], Exception] = LookupError,
                 plugins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.package = package
        self.plugins = plugins
        self.error = error
        self._entries: dict[str, tuple[int, int, T]] = {}  # name -> (order, sequence, entry)
        self._seq = 0
        self._scanned: tuple[str, ...] = ()  # the package path discovered
        self._lock = threading.RLock()

    def register(self, name: str, entry: T, order: int = LAST, replace: bool = True) -> T:
        """Add ``entry`` as ``name`` (listed by ``order``); ``replace=False`` refuses a name taken."""
        with self._lock:
            if not replace and name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._seq += 1
            self._entries[name] = (order, self._seq, entry)
        return entry

    def discover(self) -> None:
        """Import every module of the package (and of the plug-in packages), so each has registered
        its entries. Done once, and again only if a package's ``__path__`` has grown (a plug-in
        folder added to it)."""
        packages = [importlib.import_module(self.package)]
        path = tuple(packages[0].__path__)
        if path == self._scanned:
            return
        with self._lock:
            if path == self._scanned:
                return
            self._scanned = path  # before the imports: a module that reads the registry does not recurse
            packages += [importlib.import_module(name) for name in self.plugins]
            for package in packages:
                for module in pkgutil.iter_modules(package.__path__):
                    if not module.name.startswith("_"):
                        importlib.import_module(f"{package.__name__}.{module.name}")

    def names(self) -> list[str]:
        """Every registered name, in listing order."""
        self.discover()
        with self._lock:
            return [name for name, _ in sorted(self._entries.items(), key=lambda item: item[1][:2])]

    def lookup(self, name: str) -> T:
        """The entry called ``name``; ``error`` naming the known ones otherwise."""
        self.discover()
        try:
            return self._entries[name][2]
        except KeyError:
            raise self.error(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """``unknown <kind> 'x'; expected one of a, b``."""
        return f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}"

    # the mapping: reads discover first; ``registry[name] = entry`` registers it last in order
    def __getitem__(self, name: str) -> T:
        self.discover()
        return self._entries[name][2]

    def __setitem__(self, name: str, entry: T) -> None:
        self.discover()
        order = self._entries[name][0] if name in self._entries else LAST
        self.register(name, entry, order)

    def __delitem__(self, name: str) -> None:
        self.discover()
        with self._lock:
            del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries
