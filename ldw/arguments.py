"""Argument types checked against a type hint, with a message saying what was expected.

The requests of :mod:`ldw.ops` declare their arguments as ``TypedDict``s; :func:`check` holds a
value to one of those hints (``str``, ``int | None``, ``list[str]``, ``dict[str, Any]``, ...)
so ``wh.map("o", "pg.s.t", columns=5)`` fails with "map(): columns must be a list of strings
(or None), not int 5" before anything runs, on the client and again on the server. This module
imports nothing heavy, so a client may use it.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from ldw.errors import BadRequest

__all__ = ["check", "describe", "matches"]

_NAMES: dict[Any, tuple[str, str]] = {  # hint -> (one, several)
    str: ("a string", "strings"),
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    bool: ("True or False", "booleans"),
    dict: ("a dict", "dicts"),
    list: ("a list", "lists"),
}


def _parts(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` names (a tuple passes for a list, an int for
    a float; a bool is never a number)."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    options = _parts(hint)
    if len(options) > 1:
        return any(matches(value, option) for option in options)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list or hint is list:
        return isinstance(value, list | tuple) and (
            not args or all(matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(
            matches(k, args[0]) and matches(v, args[1]) for k, v in value.items()))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def describe(hint: Any) -> str:
    """``list[str] | None`` -> "a list of strings (or None)"."""
    options = [o for o in _parts(hint) if o is not type(None) and o is not None]
    optional = len(options) < len(_parts(hint))
    text = " or ".join(_one(o) for o in options) or "None"
    return f"{text} (or None)" if optional and options else text


def _one(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] is not Any:
        return f"a list of {_NAMES.get(args[0], (None, _one(args[0])))[1]}"
    if origin is dict and args and args[0] is str:
        return "a dict with string keys"
    if origin is not None:
        hint = origin
    if hint in _NAMES:
        return _NAMES[hint][0]
    return getattr(hint, "__name__", str(hint))


def _given(value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    return f"{type(value).__name__} {shown}"


def check(where: str, name: str, value: Any, hint: Any) -> None:
    """BadRequest naming ``where`` (e.g. ``map()``), the argument and the expected type when
    ``value`` is not of type ``hint``."""
    if not matches(value, hint):
        raise BadRequest(f"{where}: {name} must be {describe(hint)}, not {_given(value)}")
