"""Error messages speak the interface they reach the user through.

Messages are written once, naming the Python API (``pass overwrite=True``, ``wh.reload()``);
the ``ldw`` command and the ``%ldw`` magics show them through :func:`spoken`, which rewrites
each such hint into that interface's own words (``--overwrite``, ``ldw server reload``,
``%ldw reload``). A hint is matched as written in the message, never parsed.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["HINTS", "spoken"]

Interface = Literal["cli", "magic"]

# the hint as the Python API says it -> how the CLI and the magics say it (None: no rewrite)
HINTS: dict[str, dict[Interface, str | None]] = {
    "pass overwrite=True": {"cli": "pass --overwrite", "magic": "pass --overwrite"},
    'wh.reload(config="ldw.toml")': {"cli": "ldw --config ldw.toml server reload",
                                    "magic": "%ldw reload --config ldw.toml"},
    "wh.reload(config=...)": {"cli": None, "magic": "%ldw reload --config FILE"},
    "wh.reload()": {"cli": "ldw server reload", "magic": "%ldw reload"},
    'ldw.connect(config="ldw.toml")': {"cli": "ldw --config ldw.toml ...",
                                       "magic": "%ldw connect --config ldw.toml"},
    "call refresh()": {"cli": None, "magic": "run %ldw refresh NAME"},
}


def spoken(message: str, interface: Interface) -> str:
    """``message`` with its Python API hints in the words of ``interface``."""
    for python, words in HINTS.items():
        said = words.get(interface)
        if said is not None:
            message = message.replace(python, said)
    return message
