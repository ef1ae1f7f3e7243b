"""What run-time tools fail to evaluate in anonshm's public annotations.

Used by tests/test_hints.py in its own process and in fresh children, which import it
before ``typing``: it imports neither ``typing`` nor ``inspect`` until a check asks.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = __name__ == "typing"
if TYPE_CHECKING:
    from collections.abc import Iterator


def _functions(value: object) -> Iterator[object]:
    if isinstance(value, classmethod | staticmethod):
        value = value.__func__
    if isinstance(value, property):
        yield from (f for f in (value.fget, value.fset, value.fdel) if f is not None)
    elif callable(value) and getattr(value, "__module__", "").startswith("anonshm"):
        yield value


def public_objects(*, lazy: bool = True) -> list[tuple[str, object]]:
    """Every public name of anonshm and every public method or property of its classes.

    Dunder methods count (``__enter__``, ``__exit__``, ``__setitem__``): they are API.
    Members inherited from outside anonshm (``Exception``, ``dict``, ``IntEnum``) don't.
    With ``lazy=False``, only what ``import anonshm`` loads (no typing comes with it).
    """
    import anonshm

    found: list[tuple[str, object]] = []
    if lazy:
        import anonshm.__main__  # loads _spawn, and typing

        found.append(("anonshm.__main__.main", anonshm.__main__.main))
    for name in anonshm.__all__:
        if not lazy and name in anonshm._LAZY:
            continue
        obj = getattr(anonshm, name)
        found.append((name, obj))
        if not isinstance(obj, type):
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("anonshm"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") and not attr.endswith("__"):
                    continue
                found.extend((f"{name}.{attr}", f) for f in _functions(value))
    return found


def problems(label: str, obj: object, *, use_typing: bool = True) -> list[str]:
    """What get_type_hints and inspect.signature(eval_str=True) say of ``obj``."""
    import inspect

    found: list[str] = []
    if use_typing:
        import typing

        try:
            hints = typing.get_type_hints(obj)
        except Exception as exc:
            found.append(f"get_type_hints({label}): {exc!r}")
        else:
            found.extend(
                f"get_type_hints({label})[{key!r}] left {value!r}"
                for key, value in hints.items()
                if isinstance(value, str | typing.ForwardRef)
            )
    if not callable(obj):
        return found
    try:
        inspect.signature(obj)
    except ValueError:
        return found  # no signature at all: an exception's or dict's built-in __init__
    try:
        signature = inspect.signature(obj, eval_str=True)
    except Exception as exc:
        return [*found, f"signature({label}, eval_str=True): {exc!r}"]
    annotations = [signature.return_annotation]
    annotations += [p.annotation for p in signature.parameters.values()]
    found.extend(
        f"signature({label}, eval_str=True) left {value!r}"
        for value in annotations
        if isinstance(value, str)
    )
    return found


def unresolved(*, use_typing: bool = True, lazy: bool = True) -> list[str]:
    """Every problem of every public object (an empty list: tools see everything)."""
    return [
        text
        for label, obj in public_objects(lazy=lazy)
        for text in problems(label, obj, use_typing=use_typing)
    ]


def bound(module: str) -> dict[str, object]:
    """The names _hints bound into ``module``'s namespace so far (by its join list)."""
    import anonshm._hints

    namespace = vars(sys.modules[module])
    for joined, names in anonshm._hints._joined:
        if joined is namespace:
            return {name: namespace[name] for name in names if name in namespace}
    raise LookupError(f"{module} never joined anonshm._hints")
