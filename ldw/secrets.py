"""Secrets that cannot leak by accident: typed values that print as ``***``, and redaction."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

__all__ = ["Secret", "redact"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")


class Secret:
    """A string that never shows itself in ``str``, ``repr`` or f-strings; ``reveal()`` gets it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # never pickled with its value
        raise TypeError("Secret values cannot be pickled")


def redact(text: str, secrets: list[Secret | str | None] = ()) -> str:
    """Remove URL passwords and the given secret values from ``text`` (messages from drivers)."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            for form in {value, quote(value, safe=""), quote_plus(value)}:
                text = text.replace(form, "***")
    return text
