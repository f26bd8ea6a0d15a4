"""sqlglot's parse errors in the user's words: what was expected, and where in their text.

sqlglot reports a missing operand as ``Required keyword: 'expression' missing for <class
'sqlglot.expressions.core.GT'>``; a user wrote ``balance >`` and needs to hear that ``>`` wants a
value after it, at which character. :func:`describe_parse_error` turns either error sqlglot
raises into one sentence with the position (1-based characters of the text as typed).
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

__all__ = ["describe_parse_error", "node_name", "span"]

_MISSING = re.compile(r"Required keyword: '(\w+)' missing")
_TOKENIZING = re.compile(r"Error tokenizing '(.*)'", re.S)
_CLASS = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
_TOKEN = re.compile(r"<Token token_type: [^,]*, text: (.*?), line: .*?>")


def _position(text: str, line: int, col: int, token: str) -> int:
    """The 1-based character where ``token`` starts, from sqlglot's line and end column."""
    lines = text.splitlines(keepends=True) or [""]
    before = sum(len(part) for part in lines[:max(line - 1, 0)])
    return max(before + col - len(token) + 1, 1)


def _context(text: str, position: int) -> str:
    shown = text[max(position - 21, 0):position - 1].lstrip()
    return f" (after {shown!r})" if shown else " (at the start)"


def describe_parse_error(text: str, exc: ParseError | TokenError) -> str:
    """One sentence: what is wrong or missing in ``text`` and at which character."""
    if isinstance(exc, TokenError):
        read = _TOKENIZING.search(str(exc))
        position = len(read.group(1)) if read else 1
        return (f"a quote is not closed or a character cannot be read at character {position}"
                f"{_context(text, position)}")
    error = exc.errors[0] if getattr(exc, "errors", None) else {}
    description = str(error.get("description") or exc).splitlines()[0]
    token = str(error.get("highlight") or "")
    position = _position(text, int(error.get("line") or 1), int(error.get("col") or 1), token)
    end = position + len(token)
    missing = _MISSING.match(description)
    if missing and missing.group(1) == "high":
        return (f"BETWEEN needs both bounds ('x BETWEEN low AND high'), at character {position}"
                f"{_context(text, end)}")
    if missing:
        return (f"{token!r} at character {position} needs a value, column or condition after it"
                f"{_context(text, end)}")
    if description.startswith("Expecting "):
        expected = description.removeprefix("Expecting ").strip()
        return f"{expected!r} expected at character {end}{_context(text, end)}"
    if "Unexpected token" in description or "Invalid expression" in description:
        return (f"unexpected {token!r} at character {position}{_context(text, position)}: an "
                "operator (=, <, AND, ...) or a comma may be missing before it")
    readable = _TOKEN.sub(lambda m: repr(m.group(1)), _CLASS.sub(r"\1", description))
    return f"{readable.rstrip('.')} at character {position}{_context(text, position)}"


def span(node: exp.Expression) -> tuple[int, int] | None:
    """Where ``node`` sits in the text (0-based first and last character), from the token
    offsets sqlglot recorded on its leaves; None if it recorded none."""
    starts, ends = [], []
    for part in node.walk():
        meta = part.meta if isinstance(part, exp.Expression) else None
        if meta and isinstance(meta.get("start"), int) and isinstance(meta.get("end"), int):
            starts.append(meta["start"])
            ends.append(meta["end"])
    return (min(starts), max(ends)) if starts else None


def node_name(node: exp.Expression) -> str:
    """A syntax node as a user would name it: ``BitwiseRightShift`` -> "bitwise right shift"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__).lower()
