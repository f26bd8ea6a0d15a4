"""A server that ``ldw.connect(...)`` autostarts gets the ``[server]`` settings given to connect.

Regression for issue 13: the autostart used to re-list the settings it hands over (``LDW_*``)
and missed ``ray_address`` and ``mask_key_file``, so the server silently ran with the defaults.
The settings are passed as ``ldw.connect`` keyword arguments, not in the config file, so only the
autostart can carry them. No Ray cluster is needed: with ``backend = "local"`` the address is
only carried; with ``backend = "ray"`` the server dials it and reports that nothing listens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import ldw
from ldw.config import SERVER_KEYS, load_settings

MASK_KEY = bytes(range(32))
PHONES = ["555-0100", "555-0199"]


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Setup:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shm = Path("/dev/shm") / f"ldw-test-{uuid.uuid4().hex[:8]}"
        source = folder / "src.db"
        with sqlite3.connect(source) as db:
            db.execute("create table people (id integer, phone text)")
            db.executemany("insert into people values (?, ?)", list(enumerate(PHONES)))
        db.close()
        server = {"state_dir": folder / "state", "shm_dir": self.shm,
                  "spill_dir": folder / "spill", "catalog": f"sqlite:///{folder / 'catalog.db'}",
                  "listen": "grpc://127.0.0.1:0", "memory_limit": "256MiB"}
        lines = ["[server]"] + [f"{k} = {json.dumps(str(v))}" for k, v in server.items()]
        lines += ["[sources.lite]", f"url = {json.dumps(f'sqlite:///{source}')}",
                  '[policies."lite.main.people"]', 'columns.phone = { mask = "hash" }']
        self.config = folder / "ldw.toml"  # no ray_address, no mask_key_file: those come as
        self.config.write_text("\n".join(lines) + "\n")  # ldw.connect arguments
        keys = folder / "keys"
        keys.mkdir(mode=0o700)
        self.mask_key = keys / "mask.key"
        self.mask_key.write_text(MASK_KEY.hex())
        self.mask_key.chmod(0o600)
        self.pid: int | None = None

    def stop(self) -> None:
        """Stop the server this test autostarted (and only it); remove its shared memory."""
        subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(self.config),
                        "server", "stop"], capture_output=True, timeout=60, check=False)
        if self.pid is not None:
            try:
                process = psutil.Process(self.pid)
                process.wait(timeout=10)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.shm, ignore_errors=True)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Setup]:
    for key in SERVER_KEYS:  # nothing inherited from the test's own environment
        monkeypatch.delenv(f"LDW_{key.upper()}", raising=False)
    monkeypatch.delenv("LDW_CONFIG", raising=False)
    monkeypatch.delenv("LDW_CONFIG_JSON", raising=False)
    here = _Setup(tmp_path)
    try:
        yield here
    finally:
        here.stop()


def test_autostarted_server_receives_ray_address_and_mask_key_file(
        setup: _Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    assert not (setup.folder / "state" / "ldw.sock").exists()
    wh = ldw.connect(config=str(setup.config), ray_address=address,
                     mask_key_file=str(setup.mask_key))       # no server yet: autostart
    status = wh.status()
    setup.pid = status["pid"]
    assert status["backend"] == "local" and status["ray_address"] is None  # carried, not dialed

    # the server hashes with the key in our file, not with a default one of its own
    rows = sorted(wh.map("people", "lite.main.people").to_arrow().to_pylist(),
                  key=lambda row: row["id"])
    expected = [hmac.new(MASK_KEY, p.encode(), hashlib.sha256).hexdigest() for p in PHONES]
    assert [row["phone"] for row in rows] == expected
    assert (setup.mask_key.parent / "audit.key").exists()  # the audit key defaults beside it

    env = psutil.Process(setup.pid).environ()
    assert env["LDW_RAY_ADDRESS"] == address
    assert env["LDW_MASK_KEY_FILE"] == str(setup.mask_key)
    for name, value in env.items():  # the server's settings, as it builds them from its env
        if name.startswith("LDW_"):
            monkeypatch.setenv(name, value)
    settings = load_settings(str(setup.config))
    assert settings.ray_address == address
    assert settings.mask_key_file == setup.mask_key
    wh.close()


def test_autostarted_ray_server_dials_the_given_ray_address(setup: _Setup) -> None:
    """backend = "ray" with a ray_address: the server dials that cluster (here: nothing listens)
    instead of starting a Ray of its own."""
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ldw.ServerUnavailable, match=f"ray_address = '{address}'"):
        ldw.connect(config=str(setup.config), backend="ray", ray_address=address,
                    mask_key_file=str(setup.mask_key))
