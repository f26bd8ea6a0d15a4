"""Names the catalog browsers build and check: table references and dataset/variable names.

Shared by the ``%ldw browse`` widget and the JupyterLab panel's server extension, so both refuse
the same names for the same reasons. Nothing here touches SQL: a table is named to the API as a
``SOURCE.SCHEMA.TABLE`` reference that the core checks against the source's reflected catalog.
"""

from __future__ import annotations

import keyword

from ldw.errors import InvalidMapping

__all__ = ["RESERVED_NAMES", "name_error", "suggest_name", "table_ref"]

#: names the browsers never map (``_ldw_preview`` was the preview's dataset in ldw < 0.2)
RESERVED_NAMES = frozenset({"_ldw_preview"})


def table_ref(source: str, schema: str | None, table: str) -> str:
    """``SOURCE.SCHEMA.TABLE`` (``SOURCE.TABLE`` without a schema); InvalidMapping for parts
    that cannot be spelled in a reference."""
    parts = [source, schema, table] if schema else [source, table]
    if not all(isinstance(p, str) and p for p in parts):
        raise InvalidMapping("a table reference needs a source and a table name")
    if any("." in p for p in parts):
        raise InvalidMapping(
            f"{'/'.join(parts)}: names containing '.' cannot be referenced yet")
    return ".".join(parts)


def suggest_name(table: str) -> str:
    """A valid Python identifier for a dataset mapped from ``table``."""
    name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_"
                   for c in table.lower())
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = "t_" + name
    return name


def name_error(name: str) -> str | None:
    """Why ``name`` cannot be a dataset bound to a notebook variable, or ``None`` if it can."""
    if not name:
        return "type a name for the dataset"
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name):
        return (f"{name!r} is not a valid name: use letters, digits and '_', "
                "not starting with a digit")
    if name in RESERVED_NAMES:
        return f"{name!r} is reserved"
    return None
