"""The JupyterLab side panel: its Jupyter server extension and where its prebuilt frontend is.

``pip install ldw`` installs the prebuilt frontend (``share/jupyter/labextensions/ldw-jupyterlab``)
and enables this server extension (``etc/jupyter/jupyter_server_config.d/ldw.json``); node is
never needed. The frontend's TypeScript source is ``extension/labextension/`` in the repository.

Settings (``jupyter_server_config.py`` or the command line), all optional::

    c.LdwPanel.url = "grpc://ldw.internal:8815"   # a remote server (token: $LDW_TOKEN)
    c.LdwPanel.ldw_config = "/path/to/ldw.toml"    # else $LDW_CONFIG, as for ldw.connect()
    c.LdwPanel.autostart = False                   # do not start a local server for the panel
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Unicode

from .handlers import routes
from .panel import Panel

__all__ = ["LABEXTENSION", "LdwPanel"]

#: the frontend's name (its folder under share/jupyter/labextensions)
LABEXTENSION = "ldw-jupyterlab"
_PREBUILT = Path(__file__).resolve().parent.parent / "labextension" / "prebuilt"


class LdwPanel(ExtensionApp):
    """Serves the panel's API; connects to ldw as the user this Jupyter server runs as."""

    name = "ldw"
    load_other_extensions = True

    url = Unicode(None, allow_none=True, config=True,
                  help="address of a remote ldw server (grpc://host:port); its token is read "
                       "from $LDW_TOKEN by the ldw client. Default: the local server.")
    ldw_config = Unicode(None, allow_none=True, config=True,
                         help="ldw.toml for the local server (default: $LDW_CONFIG)")
    autostart = Bool(True, config=True,
                     help="start the local ldw server if none runs, as ldw.connect() does")

    def initialize_settings(self) -> None:
        self.panel = Panel(url=self.url, config=self.ldw_config, autostart=self.autostart,
                           root_dir=self.serverapp.root_dir)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ldw-panel")

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(self.panel, self.executor))

    async def stop_extension(self) -> None:
        self.panel.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "ldw.extension.lab", "app": LdwPanel}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """For ``jupyter labextension develop``: the prebuilt frontend of a source checkout."""
    return [{"src": str(_PREBUILT), "dest": LABEXTENSION}]
