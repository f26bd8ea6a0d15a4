"""The public surface is curated: ``ldw.__all__`` is pinned, and the core stays IPython-free."""

import subprocess
import sys

import ldw

PUBLIC = {
    "AccessDenied", "AuditUnavailable", "Cancelled", "ExportError", "ExportVerificationError",
    "verify_export", "CapacityExceeded", "ConfigError", "Dataset", "DatasetLost",
    "InvalidMapping", "LdwError", "PolicyViolation", "Progress", "ServerUnavailable",
    "SourceError", "SourceTimeout", "SourceUnavailable", "UnknownDataset", "UnknownSource",
    "UnknownTable", "UnsupportedType", "Warehouse", "connect",
}


def test_all_is_pinned():
    assert set(ldw.__all__) == PUBLIC
    for name in ldw.__all__:
        assert hasattr(ldw, name), name


def test_every_error_is_an_ldw_error_and_a_builtin():
    for name in ldw.errors.__all__:
        cls = getattr(ldw.errors, name)
        assert issubclass(cls, ldw.LdwError)
        if cls is not ldw.LdwError:
            assert len(cls.__mro__) > 3, f"{name} should also subclass a fitting builtin"


def test_client_import_needs_no_server_or_ipython_modules():
    code = ("import sys, ldw; ldw.connect; "
            "bad = [m for m in ('IPython', 'ipywidgets', 'ldw.engine', 'ldw.server', "
            "'ldw.service', 'ldw.connectors') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
