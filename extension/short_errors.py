"""``ldw.LdwError`` raised by the Python API in a cell: a short form, as the magics show.

Once the extension is loaded, IPython's custom exception handler (``set_custom_exc``) shows an
``LdwError`` as IPython shows ``SystemExit``: "An exception has occurred, use %tb to see the
full traceback." and ``InvalidMapping: <message>``, instead of the ~35 lines of ldw internals
under the user's call. The message already says what was wrong and what to do; ``%tb`` still
prints the whole traceback. Every other exception (a bug, the user's own code) keeps its full
traceback, and a handler another extension installed keeps handling its own exceptions.
"""

from __future__ import annotations

from typing import Any

from ldw.errors import LdwError

__all__ = ["ShortErrors"]


class ShortErrors:
    """Installs (and removes again) the short display of ``LdwError`` on one shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._previous: tuple[tuple[type, ...], Any] | None = None

    @property
    def installed(self) -> bool:
        return self._previous is not None

    def install(self) -> None:
        if self._previous is not None:
            return
        shell = self.shell
        self._previous = others, other_handler = (tuple(shell.custom_exceptions),
                                                  shell.CustomTB)

        def handler(shell: Any, etype: type, value: BaseException, tb: Any,
                    tb_offset: int | None = None) -> list[str] | None:
            if not isinstance(value, LdwError):  # another extension's exception
                return other_handler(etype, value, tb, tb_offset=tb_offset)
            # the public way IPython shows a short error; it keeps the traceback for %tb
            shell.showtraceback((etype, value, tb), exception_only=True)
            return None

        shell.set_custom_exc((*others, LdwError), handler)

    def uninstall(self) -> None:
        if self._previous is None:
            return
        self.shell.custom_exceptions, self.shell.CustomTB = self._previous
        self._previous = None
