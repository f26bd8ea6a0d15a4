"""The engine package: a small facade (:class:`Engine`) over source browsing, dataset
definition and access, and materialization and capacity."""

from ldw.engine.checks import check_name, check_user, server_os_user
from ldw.engine.facade import Engine
from ldw.lifecycle import DERIVED, DatasetRecord

__all__ = ["DERIVED", "DatasetRecord", "Engine", "check_name", "check_user", "server_os_user"]
