"""The local client: talks to the server over its Unix socket, starting it if needed.

Cached versions arrive as read-only file descriptors and are memory-mapped here, so attaching
a dataset costs the same milliseconds whatever its size. The server is started detached, in
its own session, so it outlives the process (and the Jupyter kernel) that started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ldw.config import Settings, _user, server_env
from ldw.errors import AccessDenied, ConfigError, ServerUnavailable
from ldw.governance.trust import NOT_WRITABLE, check_dir, create_private, private_dir
from ldw.ops import checked_request
from ldw.storage import MAX_PARTS, direct_reader, open_fds
from ldw.types import AttachInfo, Progress
from ldw.wire import STREAM_ERROR, error_from_bytes, final_result, frame

__all__ = ["LocalBackend", "pid_path", "running_pid", "socket_path", "start_server",
           "stop_server"]

ProgressCallback = Callable[[Progress], None]

def socket_path(settings: Settings) -> Path:
    """Where the server of ``settings`` listens; the same as :func:`ldw.server.socket_path`.

    Spelled out here because importing :mod:`ldw.server` pulls in the engine, the connectors
    and SQLAlchemy (about 0.2 s), which a client that only attaches never needs.
    """
    return settings.state_dir / "ldw.sock"


def pid_path(settings: Settings) -> Path:
    return settings.state_dir / "ldw.pid"


def running_pid(settings: Settings) -> int | None:
    """The pid of the server holding this state_dir's lock, or None (zombies hold no lock).

    Only a pid file of ours, in a state_dir of ours that nobody else can write to, counts."""
    path = pid_path(settings)
    if not os.path.lexists(settings.state_dir):
        return None
    check_dir(settings.state_dir, "state_dir", forbidden=NOT_WRITABLE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a link (ELOOP) or unreadable
        raise ConfigError(f"pid file {str(path)!r} cannot be trusted ({exc.strerror}); "
                          "remove it") from None
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise ConfigError(f"pid file {str(path)!r} belongs to another user; remove it")
    with open(fd) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def _server_owner(path: Path) -> int:
    """The uid the server at ``path`` must run as: the owner of its state_dir, which must be
    a real folder nobody else can write to (else anyone could have put a socket there)."""
    try:
        owner = os.lstat(path.parent).st_uid
    except FileNotFoundError:
        return os.geteuid()  # nothing there: connect() says so
    check_dir(path.parent, "state_dir", owner=owner, forbidden=NOT_WRITABLE)
    return owner


class _Connection:
    """One request's socket: reads JSON frames (and descriptors sent with them), then bytes.

    The process at the other end must run as the owner of the socket's folder (its Unix peer
    credentials say so), so a socket someone else put in its place is never talked to."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        owner = _server_owner(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise ServerUnavailable(
                f"no ldw server is listening at {path}; start one with `ldw server start` "
                "(ldw.connect() starts it unless autostart=False)") from exc
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.peer_pid, peer_uid, _gid = struct.unpack("3i", raw)
        if peer_uid != owner:
            self.sock.close()
            raise AccessDenied(
                f"the socket {path} is served by uid {peer_uid}, not by the owner (uid {owner}) "
                "of its state_dir: someone may have replaced it; ldw does not talk to it. Stop "
                "the process behind it and restart the ldw server")
        self.buffer = bytearray()
        self.fds: list[int] = []

    def _fill(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, MAX_PARTS)
        except OSError as exc:
            raise ServerUnavailable(f"lost the ldw server mid-request: {exc}") from exc
        self.fds.extend(fds)
        if not data:
            raise ServerUnavailable("the ldw server closed the connection mid-request (did it "
                                    "stop?); check `ldw server status`")
        self.buffer += data

    def read_frame(self) -> dict[str, Any]:
        while (end := self.buffer.find(b"\n")) < 0:
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return json.loads(line)

    def read(self, size: int = -1) -> bytes:
        """File-like read for the Arrow IPC stream after the final frame: exactly ``size``
        bytes (everything left if negative), fewer only at the end of the stream."""
        while size < 0 or len(self.buffer) < size:
            try:
                chunk = self.sock.recv(1 << 20 if size < 0 else max(size - len(self.buffer),
                                                                    1 << 16))
            except OSError as exc:
                raise ServerUnavailable(f"lost the ldw server mid-stream: {exc}") from exc
            if not chunk:
                break
            self.buffer += chunk
        n = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.sock.close()


class LocalBackend:
    """A client of the local server (same host), identified by its Unix user."""

    writes_exports = True  # as its own OS user; the server only checks policy and audits

    def __init__(self, path: Path, *, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.user = _user()
        self._where: str | None = None
        self._direct = direct_reader(self.call)  # the store's own zero-copy path, if any
        # Is anyone listening? Connecting says so without a request and its round trip (the
        # server reads an empty request and drops it); the first call answers the rest.
        _Connection(path, timeout).close()

    @property
    def where(self) -> str:
        """"local server (pid N)", asked of the server the first time it is needed."""
        if self._where is None:
            self._where = f"local server (pid {self.call('status')['pid']})"
        return self._where

    @classmethod
    def connect(cls, settings: Settings, *, config: Any = None,
                overrides: dict[str, Any] | None = None, autostart: bool = True) -> LocalBackend:
        path = socket_path(settings)
        try:
            return cls(path)
        except ServerUnavailable:
            if not autostart:
                raise
        start_server(settings, config=config, overrides=overrides or {})
        return cls(path)

    def _open(self, op: str, args: dict[str, Any] | None) -> _Connection:
        checked_request(op, args or {})  # a wrong argument is said here, before it is sent
        conn = _Connection(self.path, self.timeout)
        try:
            conn.sock.sendall(frame({"op": op, "args": args or {}}))
        except OSError as exc:
            conn.close()
            raise ServerUnavailable(f"lost the ldw server: {exc}") from exc
        return conn

    def _result(self, conn: _Connection, progress: ProgressCallback | None) -> Any:
        return final_result(iter(conn.read_frame, None), progress)

    def call(self, op: str, args: dict[str, Any] | None = None, *,
             progress: ProgressCallback | None = None) -> Any:
        conn = self._open(op, args)
        try:  # an interrupt closes the socket: the server sees it and cancels the source read
            return self._result(conn, progress)
        finally:
            conn.close()

    def attach(self, ref: dict[str, Any], *, progress: ProgressCallback | None = None
               ) -> tuple[AttachInfo, pa.Table]:
        direct = self._direct.attach(ref, progress)
        if direct is not None:
            return direct
        conn = self._open("attach", dict(ref))
        try:
            info = self._result(conn, progress)
            layout = info.pop("layout", None) or {"files": 1, "keep": None}
            files = int(layout["files"])
            if not 0 < files <= len(conn.fds):
                raise ServerUnavailable("the server sent fewer file descriptors than the "
                                        "version has files")
            keep = layout.get("keep")
            return info, open_fds(conn.fds[-files:], tuple(map(tuple, keep))
                                  if keep is not None else None)
        finally:
            conn.close()

    def stream(self, op: str, args: dict[str, Any]) -> pa.RecordBatchReader:
        conn = self._open(op, args)
        try:
            self._result(conn, None)
            reader = pa.ipc.open_stream(pa.PythonFile(conn, mode="r"))
        except BaseException:
            conn.close()
            raise
        return pa.RecordBatchReader.from_batches(reader.schema, _closing(reader, conn))

    def server_pid(self, *, timeout: float = 5.0) -> int:
        """The pid of the ldw server behind the socket, by its peer credentials; if it answers
        within ``timeout``, it must also say that pid is its own."""
        conn = _Connection(self.path, timeout)
        try:
            conn.sock.sendall(frame({"op": "status", "args": {}}))
            status = self._result(conn, None)
        except (TimeoutError, ServerUnavailable):
            return conn.peer_pid  # busy or hung: the kernel's word is enough
        finally:
            conn.close()
        if not isinstance(status, dict) or status.get("pid") != conn.peer_pid:
            raise ServerUnavailable(f"the process behind {self.path} (pid {conn.peer_pid}) "
                                    "did not answer as the ldw server")
        return conn.peer_pid

    def close(self) -> None:
        """Nothing to release: every request has its own connection; the server stays up."""


def _closing(reader: pa.ipc.RecordBatchStreamReader, conn: _Connection
             ) -> Iterator[pa.RecordBatch]:
    """The batches; a batch carrying an error (the server's stream failed) raises it."""
    try:
        while True:
            try:
                batch, metadata = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                return
            if metadata is not None and STREAM_ERROR.encode() in metadata:
                raise error_from_bytes(metadata[STREAM_ERROR.encode()]) or ServerUnavailable(
                    "the ldw server ended the stream with an error it did not describe")
            yield batch
    finally:
        conn.close()


def start_server(settings: Settings, *, config: Any = None, overrides: dict[str, Any],
                 wait: float = 60.0) -> int:
    """Start the local server detached (own session: it outlives us); return its pid."""
    private_dir(settings.state_dir, "state_dir", forbidden=NOT_WRITABLE)
    log_path = settings.state_dir / "server.log"
    env = {**os.environ, **server_env(overrides)}  # every [server] key, none re-listed here
    command = [sys.executable, "-m", "ldw.cli", "server", "start", "--foreground"]
    if isinstance(config, dict):
        env["LDW_CONFIG_JSON"] = json.dumps(config)
    elif config is not None:
        command += ["--config", str(Path(config).expanduser().resolve())]
    with open(create_private(log_path), "ab") as log:
        written = log.seek(0, os.SEEK_END)  # what this start writes follows
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=env, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait
    path = socket_path(settings)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if path.exists():  # another client started it first: fine
                with contextlib.suppress(ServerUnavailable):
                    LocalBackend(path).call("status")
                    return -1
            raise ServerUnavailable(f"the ldw server failed to start: "
                                    f"{_start_failure(log_path, written)} (log: {log_path})")
        with contextlib.suppress(ServerUnavailable, OSError):
            LocalBackend(path).call("status")  # answering, not only listening
            return process.pid
        time.sleep(0.05)
    raise ServerUnavailable(f"the ldw server did not answer within {wait:.0f}s; see {log_path}")


def _start_failure(log_path: Path, offset: int) -> str:
    """Why a server that exited at once did not start: the ``ldw: ...`` line it printed (its
    error, as ``ldw`` prints every LdwError), else the last lines of its log."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").strip().splitlines()
    said = [line.removeprefix("ldw: ") for line in lines if line.startswith("ldw: ")]
    return said[-1] if said else " | ".join(lines[-3:]) or "it exited without a word"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_server(settings: Settings, *, wait: float = 30.0) -> int | None:
    """Stop the local server of ``settings`` (SIGTERM, then wait until it is gone); return its
    pid, or None if none ran. The one way ``ldw server stop`` and the demo stop a server.

    The pid file alone is no proof: only the process serving the socket is signalled, else
    :class:`AccessDenied` says why nothing was killed. :class:`ServerUnavailable` if it is still
    running after ``wait`` seconds.
    """
    pid = running_pid(settings)
    if pid is None:
        return None
    path = socket_path(settings)
    try:
        serving = LocalBackend(path).server_pid()
    except ServerUnavailable as exc:
        serving, reason = None, str(exc)
    else:
        reason = f"the process serving {path} is pid {serving}"
    if serving != pid:
        raise AccessDenied(f"not stopping pid {pid}: it is not the ldw server of "
                           f"{settings.state_dir} ({reason}); nothing was killed")
    with contextlib.suppress(ProcessLookupError):  # it may just have exited by itself
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait

    def running() -> bool:  # the pid file goes first; the process may still be closing
        return running_pid(settings) == pid or _alive(pid)

    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    if running():
        raise ServerUnavailable(f"ldw server (pid {pid}) did not stop within {wait:.0f}s; "
                                f"stop it with `kill {pid}`")
    return pid
