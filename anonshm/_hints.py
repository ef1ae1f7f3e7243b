"""Annotations that run-time tools can evaluate, bound only once such a tool can run.

What only annotations name (``Protection``, ``Self``, ``socket`` ...) each module imports
behind its ``TYPE_CHECKING`` guard (see ``_compat``): a child that only maps inherited
memory must not pay for ``typing``, ``enum`` or ``socket``.  At run time those names are
then missing, and ``typing.get_type_hints()`` or ``inspect.signature(eval_str=True)``,
which evaluate an annotation in its module's namespace, raise ``NameError``.

Nothing evaluates an annotation before ``typing``, ``inspect`` or (3.14) ``annotationlib``
is loaded: they hold every function that does.  So a module joins with one line after
its guarded imports::

    join(globals(), "Protection", "Self", "socket")

and the names are bound into its namespace, never over a name it defines, as soon as one
of those modules is loaded: at once if one is (the usual case), else by the import hook
of ``anonshm/__init__.py`` right after it loads.  A module name in the list is bound as a
stand-in that imports it when an annotation reads an attribute of it: evaluating
``"socket.socket"`` pays for ``socket`` then, and having ``typing`` loaded does not.

What it costs: a lean child imports this module (0.2 ms) and binds nothing.  When
``typing`` loads, ``Protection`` is imported (0.5 ms; 2 ms on 3.13, whose typing loads
no ``enum``); when ``inspect`` loads first, ``typing`` is imported as well (2.5 ms).
A reload of a joined module joins again; anonshm imported afresh installs its own hook
(as for the reducer), and the first copy's modules keep what was bound already.
"""

import sys
from _thread import allocate_lock, get_ident

TYPE_CHECKING = __name__ == "typing"  # False when run, open to tools: see _compat
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = ["TRIGGERS", "find_elsewhere", "find_spec", "join"]

# The modules whose functions evaluate annotations: loading one binds the names.
TRIGGERS = frozenset({"annotationlib", "inspect", "typing"})

_PACKAGE = __name__.rpartition(".")[0]
# Where each name a module may join comes from: the attribute of that name there.
_SOURCES = {
    "Any": "typing",
    "Final": "typing",
    "NoReturn": "typing",
    "Self": "typing",
    "Unpack": "typing",  # what typing_extensions re-exports from 3.12 on
    "Callable": "collections.abc",
    "Iterable": "collections.abc",
    "Iterator": "collections.abc",
    "Mapping": "collections.abc",
    "Sequence": "collections.abc",
    "ModuleType": "types",
    "TracebackType": "types",
    "ref": "_weakref",
    "Protection": f"{_PACKAGE}._protection",
}
# Modules an annotation names by attribute ("socket.socket"): bound as a _Deferred.
_MODULES = frozenset({"mmap", "socket", "subprocess", "typing_extensions"})

_lock = allocate_lock()
# The namespaces joined, with their names: bound again by each trigger (idempotent).
_joined: "list[tuple[dict[str, object], tuple[str, ...]]]" = []


class _Deferred:
    """A module imported when an annotation first reads an attribute of it."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        __import__(self._name)
        return getattr(sys.modules[self._name], attribute)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported when an annotation reads it>"


def join(namespace: "dict[str, object]", *names: str) -> None:
    """Bind ``names`` into a module's ``namespace`` once annotations can be evaluated.

    Args:
        namespace: the module's ``globals()``.
        names: what its annotations name and its ``TYPE_CHECKING`` block imports; each
            a key of ``_SOURCES`` or a module of ``_MODULES``.

    Raises:
        ValueError: a name this module does not know where to find.
    """
    unknown = [name for name in names if name not in _SOURCES and name not in _MODULES]
    if unknown:
        raise ValueError(f"anonshm._hints has no source for {unknown}: add it to _SOURCES")
    with _lock:
        # A reload runs the join again with the same namespace: one entry, its new names.
        _joined[:] = [entry for entry in _joined if entry[0] is not namespace]
        _joined.append((namespace, names))
    # After the entry is in: a trigger loading from now on binds it itself.
    if any(name in sys.modules for name in TRIGGERS):
        _bind(namespace, names)


def _bind(namespace: "dict[str, object]", names: "Sequence[str]") -> None:
    for name in names:
        if name in namespace:
            continue  # the module's own, or bound already
        source = _SOURCES.get(name)
        if source is None:
            namespace.setdefault(name, _Deferred(name))
            continue
        try:
            __import__(source)
        except ImportError:
            continue  # evaluating that annotation raises NameError, as without us
        namespace.setdefault(name, getattr(sys.modules[source], name))


def _bind_all() -> None:
    # No lock held while binding: it imports, and the importing thread of a trigger may
    # be waiting for one we hold.  A namespace joined meanwhile binds itself (join).
    with _lock:
        joined = list(_joined)
    for namespace, names in joined:
        _bind(namespace, names)


class _BindingLoader:
    """Runs the real loader of a trigger module, gives it back, then binds the names."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)  # get_source, is_package, ... as before

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        module: ModuleType | None = self._loader.create_module(spec)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: "ModuleType") -> None:
        try:
            self._loader.exec_module(module)  # type: ignore[attr-defined]
        finally:
            # No trace left: typing's __loader__ and __spec__ name its own loader again.
            module.__loader__ = self._loader  # type: ignore[assignment]
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader  # type: ignore[assignment]
        _bind_all()


_resolving: "set[int]" = set()  # threads inside find_elsewhere right now


def find_elsewhere(
    fullname: str, path: "Sequence[str] | None", target: "ModuleType | None" = None
) -> "ModuleSpec | None":
    """The spec the other finders give ``fullname``, as the import system would have.

    The search of both import hooks (this module's, and the reducer's in
    ``_multiprocessing``), which then wrap the loader it returns.  A finder that asks
    the meta path again meets None; anonshm's own hook (any copy of it) is skipped.
    """
    thread = get_ident()
    if thread in _resolving:
        return None
    _resolving.add(thread)
    try:
        for finder in sys.meta_path:
            # Recognised by this mark, not by class: a second copy of the hook (anonshm
            # imported afresh) must never be asked back.
            if getattr(finder, "anonshm_reducer_hook", False):
                continue
            find = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = None if find is None else find(fullname, path, target)
            if spec is not None:
                return spec
        return None
    finally:
        _resolving.discard(thread)


def find_spec(
    fullname: str, path: "Sequence[str] | None", target: "ModuleType | None" = None
) -> "ModuleSpec | None":
    """The spec of a trigger module, its loader wrapped to bind the names after it runs.

    Called by the import hook in ``anonshm/__init__.py`` for the ``TRIGGERS`` (a reload
    binds again).  Only the loader the other finders return is wrapped; with no spec,
    or a loader it cannot wrap, it steps aside, and annotations stay unevaluable as
    they were without anonshm's help.
    """
    spec = find_elsewhere(fullname, path, target)
    if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
        spec.loader = _BindingLoader(spec.loader)  # type: ignore[assignment]
    return spec
