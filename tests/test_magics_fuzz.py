"""Random and adversarial %ldw lines: either they work or they fail with one-line UsageError;
they never crash otherwise and never change the source."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from test_magics import connect, lite_config, magics, run, shell  # noqa: F401 - fixtures

_WORDS = st.sampled_from([
    "map", "ls", "info", "cache", "evict", "refresh", "describe", "tables", "sql", "share",
    "attach", "export", "audit", "status", "sources", "help", "x", "it", "=", "lite.items",
    "lite.nosuch", "lite", "--where", "--columns", "--limit", "--partitions", "--partition-on",
    "--ttl", "--pin", "--memory-only", "--cache", "--with", "--as", "--role", "--help", "-o",
    "'price > 10'", "'1=1; drop table items'", "\"x') OR ('1'='1\"", "'", "\"", ";", "{x}",
    "$x", ":p", ":nosuch", "-1", "0", "99999999999999999999", "id,name", "id;drop", "a/b",
    "../../etc", "\\", "\t", "𝔘", "%ldw", "%%ldw", "$(rm -rf /)", "`id`",
])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(_WORDS, min_size=1, max_size=8).map(" ".join))
def test_fuzzed_magic_lines_fail_cleanly_and_touch_nothing(shell, magics,  # noqa: F811
                                                           lite_config, line):  # noqa: F811
    if not getattr(shell, "_ldw_fuzz_connected", False):
        connect(shell, lite_config)
        shell._ldw_fuzz_connected = True
        shell.user_ns["p"] = 5
    ran = run(shell, f"%ldw {line}")
    if ran.error is not None:
        assert isinstance(ran.error, UsageError), (line, repr(ran.error))
        assert "\n" not in str(ran.error), line
        assert "Traceback" not in ran.stderr, line
    db = Path(lite_config).parent / "shop.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from items").fetchone() == (1000,)
