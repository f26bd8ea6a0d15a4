"""The ldw server: one process per ``state_dir`` that owns the engine and serves it.

Local clients connect to a Unix socket (always on) and are identified by the socket's peer
credentials; a cached version is handed over as a read-only file descriptor that the client
memory-maps. Remote clients use Arrow Flight over TCP with a token (:mod:`ldw.flight`).

One request per connection on the Unix socket: the client sends one JSON frame
``{"op": ..., "args": {...}}``; the server answers with zero or more ``{"progress": ...}``
frames and one final ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}`` frame.
``attach`` sends the version's descriptor with the final frame (SCM_RIGHTS); ``scan`` follows
the final frame with an Arrow IPC stream.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import select
import signal
import socket
import socketserver
import struct
import threading
import time
from typing import Any

import pyarrow as pa

from ldw import ops
from ldw.config import Settings
from ldw.engine import Engine
from ldw.errors import AccessDenied, BadRequest, Cancelled, LdwError, ServerUnavailable
from ldw.governance.trust import NOT_WRITABLE, create_private, private_dir
from ldw.service import Service
from ldw.types import Progress
from ldw.unix import pid_path, running_pid, socket_path
from ldw.wire import MAX_REQUEST, STREAM_ERROR, encode_error, error_bytes, frame, progress_to_json

__all__ = ["Server", "running_pid", "serve", "socket_path"]

log = logging.getLogger("ldw.server")


def peer_user(sock: socket.socket) -> tuple[int, int, str]:
    """(pid, uid, user name) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return pid, uid, name


def _read_request(sock: socket.socket) -> dict[str, Any]:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise BadRequest("the request ended before its end of line")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise BadRequest(f"request larger than {MAX_REQUEST} bytes refused")
    try:
        request = json.loads(data)
    except ValueError:
        raise BadRequest("request is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str) or not \
            isinstance(request.get("args", {}), dict):
        raise BadRequest('request must be {"op": NAME, "args": {...}}')
    return request


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the client closed its end (it sends nothing after its request)."""
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


class _UnixHandler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        owner = self.server.owner
        sock.settimeout(owner.read_timeout)  # an idle or trickling client is dropped soon
        try:
            pid, uid, user = peer_user(sock)
            with owner.service.refusals_audited(user, "connect", {}):
                owner.authorize_local(uid, user)
            request = _read_request(sock)
            # the answer may take a long materialization; a client that stops reading what
            # we send is dropped after send_timeout
            sock.settimeout(owner.send_timeout)
            self.dispatch(sock, user, request["op"], request.get("args", {}))
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away")
        except TimeoutError as exc:
            if isinstance(exc, LdwError):  # QueryTimeout, SourceTimeout: the caller's answer
                with contextlib.suppress(OSError):
                    sock.sendall(frame({"ok": False, "error": encode_error(exc)}))
            else:
                log.info("client idle or not reading: connection dropped")
        except Exception as exc:  # one frame per failure; internals only in the log
            if not isinstance(exc, LdwError):
                log.exception("request failed")
            with contextlib.suppress(OSError):
                sock.sendall(frame({"ok": False, "error": encode_error(exc)}))

    def dispatch(self, sock: socket.socket, user: str, op: str, args: dict[str, Any]) -> None:
        service = self.server.owner.service

        def progress(event: Progress) -> None:
            try:
                sock.sendall(frame({"progress": progress_to_json(event)}))
            except OSError as exc:  # the client went away: the read it asked for stops,
                if event.done:      # unless it is complete (then the version is kept)
                    return
                raise Cancelled("the client went away while the dataset was loading (a "
                                "kernel interrupt or restart)") from exc

        kind = ops.kind_of(op)
        if kind == ops.Kind.ATTACH:
            info, fds = service.attach(user, args, progress)
            try:
                socket.send_fds(sock, [frame({"ok": True, "result": {
                    **info, "layout": fds.layout()}})], fds.fds)
            finally:
                fds.close()
        elif kind == ops.Kind.STREAM:
            reader = service.stream(user, op, args, client_gone=lambda: _peer_gone(sock))
            sock.sendall(frame({"ok": True, "result": None}))
            with sock.makefile("wb") as out:
                _send_stream(out, reader)
        else:
            result = service.call(user, op, args, progress)
            sock.sendall(frame({"ok": True, "result": result}))


def _send_stream(out: Any, reader: pa.RecordBatchReader) -> None:
    """Write the reader as an Arrow IPC stream. A failure while reading (a revoked share, a
    lost source) is sent as an empty batch carrying the error (``STREAM_ERROR`` metadata)
    before the end, so the client raises it instead of taking a cut result as whole."""
    writer = pa.ipc.new_stream(out, reader.schema)
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as exc:
            if not isinstance(exc, LdwError):
                log.exception("stream failed")
            writer.write_batch(pa.RecordBatch.from_pylist([], schema=reader.schema),
                               custom_metadata={STREAM_ERROR: error_bytes(exc)})
            break
        writer.write_batch(batch)
    writer.close()


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    owner: Server
    max_connections = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Bound the connections served at once; beyond that a client is told to retry."""
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(frame({"ok": False, "error": {
                    "type": "ServerUnavailable",
                    "message": f"the ldw server is serving {self.max_connections} connections; "
                               "retry shortly"}}))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Server:
    """The server process's owner object: engine, Unix socket, Flight endpoint, pid lock."""

    read_timeout = 10.0    # seconds a client has to send its request
    send_timeout = 120.0   # seconds a client may stall while we send (or compute) its answer
    stop_grace = 10.0      # seconds `ldw server stop` waits for calls to end before exiting

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        private_dir(settings.state_dir, "state_dir", forbidden=NOT_WRITABLE)
        self._pid_file = self._lock_pid_file()
        self.engine = Engine(settings)
        self.service = Service(self.engine, describe_server=self.describe)
        self._unix: _UnixServer | None = None
        self._flight: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _lock_pid_file(self) -> Any:
        path = pid_path(self.settings)
        # held open for the server's lifetime
        handle = open(create_private(path), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "?"
            handle.close()
            raise ServerUnavailable(
                f"an ldw server (pid {other}) already runs for {self.settings.state_dir}; "
                "stop it with `ldw server stop` or choose another state_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def authorize_local(self, uid: int, user: str) -> None:
        if uid == os.getuid() or user in self.settings.users:
            return
        raise AccessDenied(f"user {user!r} is not known to this ldw server; ask its owner to "
                           f"add [users.{user}] to ldw.toml")

    @property
    def addresses(self) -> dict[str, str | None]:
        return {"socket": str(socket_path(self.settings)),
                "flight": self._flight.address if self._flight is not None else None}

    def describe(self) -> dict[str, Any]:
        return {"mode": "server", "pid": os.getpid(), "started": self.started,
                **self.addresses}

    def start(self) -> None:
        """Open Flight, then the Unix socket: a client that gets an answer on the socket (as
        ``ldw server start`` waits for) knows that everything is up, and a Flight address that
        cannot be had fails the start with the reason, before anyone is told "started"."""
        if self.settings.listen:
            from ldw.flight import FlightEndpoint

            # serving starts with the endpoint; its serve() would take over SIGTERM
            self._flight = FlightEndpoint.from_settings(self.settings, self.service,
                                                        self.engine.admin.user_for_token_hash)
        path = socket_path(self.settings)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # we hold the pid lock: a socket file left here is stale
        self._unix = _UnixServer(str(path), _UnixHandler)
        self._unix.owner = self
        os.chmod(path, 0o666)  # anyone may knock; peer credentials decide who gets in
        self._spawn(self._unix.serve_forever, "ldw-unix")
        self._spawn(self._sweep, "ldw-ttl")
        log.info("ldw server %d serving %s", os.getpid(), self.addresses)

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweep(self) -> None:
        while not self._stop.wait(self.settings.ttl_sweep_seconds):
            try:
                self.engine.expire()
            except Exception:  # the next sweep tries again; the server keeps serving
                log.exception("expiring datasets past their ttl failed")

    def wait(self) -> None:
        self._stop.wait()

    def stop(self, *_: object) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        # Running SQL queries first: a transport's shutdown waits for the calls they serve.
        try:
            self.engine.stop_queries()
        except Exception:  # closing goes on: the transports and the engine still shut down
            log.exception("stopping the running queries failed")
        if self._unix is not None:
            self._unix.shutdown()
            self._unix.server_close()
            with contextlib.suppress(FileNotFoundError):
                socket_path(self.settings).unlink()
        if self._flight is not None:
            self._flight.shutdown()
        self.engine.close()
        self._pid_file.close()
        log.info("ldw server %d stopped", os.getpid())


def serve(settings: Settings) -> None:
    """Run a server in this process until SIGTERM/SIGINT (``ldw server start --foreground``).

    Stopping always finishes: running queries are interrupted, and if closing still takes more
    than ``Server.stop_grace`` seconds (a call stuck in a driver) the process exits anyway;
    nothing half-written is ever published, so that is as safe as a crash.
    """
    os.umask(0o077)  # every file the server makes is private from its first byte
    server = Server(settings)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    try:
        server.start()
    except BaseException:  # e.g. the Flight port is taken: the caller prints why
        server.close()
        raise
    try:
        server.wait()
    finally:
        closing = threading.Thread(target=server.close, name="ldw-close", daemon=True)
        closing.start()
        closing.join(server.stop_grace)
        if closing.is_alive():
            log.warning("ldw server %d: calls still running after %gs; exiting now",
                        os.getpid(), server.stop_grace)
            logging.shutdown()
            os._exit(1)
