"""Arrow Flight, client side: :class:`FlightBackend`, how a remote ``Warehouse`` reaches a server.

Operations are Flight actions with JSON bodies (see :mod:`ldw.ops`); data arrives with ``do_get``
on the tickets they return, an attach on several parallel streams. A failed call's ldw error
comes back from the Flight error's ``extra_info`` (:func:`ldw.wire.error_from_bytes`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.flight as fl

from ldw.errors import AccessDenied, ConfigError, LdwError, ServerUnavailable
from ldw.ops import checked_request
from ldw.types import AttachInfo, Progress
from ldw.wire import error_from_bytes, final_result

__all__ = ["FlightBackend"]


SERVER_SCHEMES = ("grpc", "grpc+tcp", "grpc+tls")


def server_address(url: str) -> Any:
    """``url`` parsed, if it is an ldw server's address; else a ``ConfigError`` that says what
    to write instead. A database URL (the habit of SQL magics) is told where sources go; its
    password, if it carries one, is never repeated."""
    parsed = urlparse(url if isinstance(url, str) else "")
    if parsed.scheme in SERVER_SCHEMES and parsed.hostname:
        return parsed
    if parsed.scheme and parsed.scheme not in SERVER_SCHEMES:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            database = make_url(url)
        except ArgumentError:
            database = None
        if database is not None:
            name = "".join(c if c.isalnum() else "_" for c in (
                database.database or database.host or "db").rsplit("/", 1)[-1]) or "db"
            bare = database._replace(password=None).render_as_string(hide_password=False)
            secret = (f"; take the password out of the URL and keep it in "
                      f"password_env = \"{name.upper()}_PASSWORD\" (or keyring)"
                      if database.password is not None else "")
            raise ConfigError(
                f"{bare} is a database, not an ldw server: ldw reads databases as sources "
                f"named in ldw.toml, e.g. [sources.{name}] url = \"{bare}\"{secret}; then "
                'ldw.connect(config="ldw.toml") and map its tables (ldw server addresses are '
                "grpc://host:port)")
    shown = f"...@{url.rpartition('@')[2]}" if isinstance(url, str) and "@" in url else url
    raise ConfigError(f"{shown!r} is not an ldw server address; write grpc://host:port")


class FlightBackend:
    """A remote client: JSON actions and ``do_get`` streams over Flight, with a token.

    ``streams`` is how many parallel streams (each on its own connection) an attach asks for;
    the server may send fewer. Two or more keep both sides of a loopback transfer busy.
    """

    def __init__(self, url: str, *, token: str | None,
                 tls_root_certs: str | os.PathLike[str] | None = None) -> None:
        parsed = server_address(url)
        if not token:
            token = os.environ.get("LDW_TOKEN")
        if not token:
            raise ConfigError("a remote ldw server needs a token: connect(url, token=...) or "
                              "$LDW_TOKEN (the server's owner creates one: `ldw user add NAME`)")
        scheme = "grpc+tls" if parsed.scheme == "grpc+tls" else "grpc+tcp"
        options: dict[str, Any] = {}
        if tls_root_certs is not None:
            with open(tls_root_certs, "rb") as handle:
                options["tls_root_certs"] = handle.read()
        self.url = f"{scheme}://{parsed.hostname}:{parsed.port or 8815}"
        self.where = url
        self.streams = min(4, max(2, os.cpu_count() or 1))
        self._client_options = options
        self._client = fl.FlightClient(self.url, **options)
        self._data_clients: list[fl.FlightClient] = []  # extra connections for extra streams
        self._data_lock = threading.Lock()
        self._options = fl.FlightCallOptions(headers=[(b"authorization",
                                                       f"Bearer {token}".encode())])
        self.user = str(self.call("status")["user"])  # also proves the token now

    def _actions(self, op: str, args: dict[str, Any]) -> Iterator[dict[str, Any]]:
        checked_request(op, args)  # a wrong argument is said here, before it is sent
        try:
            for result in self._client.do_action(fl.Action(op, json.dumps(args).encode()),
                                                 options=self._options):
                yield json.loads(result.body.to_pybytes())
        except fl.FlightUnauthenticatedError as exc:
            raise AccessDenied(f"{self.where}: the token was refused ({_first_line(exc)})") \
                from None
        except fl.FlightUnavailableError as exc:
            raise ServerUnavailable(f"cannot reach the ldw server at {self.where}: "
                                    f"{_first_line(exc)}") from None
        except fl.FlightError as exc:
            raise _decode_flight_error(exc) from None

    def call(self, op: str, args: dict[str, Any] | None = None, *,
             progress: Callable[[Progress], None] | None = None) -> Any:
        return final_result(self._actions(op, dict(args or {})), progress)

    def _get(self, ticket: str, client: fl.FlightClient | None = None) -> fl.FlightStreamReader:
        try:
            return (client or self._client).do_get(fl.Ticket(bytes.fromhex(ticket)),
                                                   options=self._options)
        except fl.FlightError as exc:
            raise _decode_flight_error(exc) from None

    def _connections(self, count: int) -> list[fl.FlightClient]:
        """``count`` clients on distinct connections (the first is the control connection):
        streams sharing one connection are read by one thread of gRPC's."""
        with self._data_lock:
            while len(self._data_clients) < count - 1:
                self._data_clients.append(fl.FlightClient(
                    self.url, generic_options=[("grpc.use_local_subchannel_pool", 1)],
                    **self._client_options))
            return [self._client, *self._data_clients[:count - 1]]

    def attach(self, ref: dict[str, Any], *,
               progress: Callable[[Progress], None] | None = None
               ) -> tuple[AttachInfo, pa.Table]:
        args = dict(ref, streams=self.streams) if self.streams > 1 else dict(ref)
        info = self.call("attach", args, progress=progress)
        tickets = info.pop("tickets", None) or [info.pop("ticket")]
        return info, self._read_all(tickets)

    def _read_all(self, tickets: list[str]) -> pa.Table:
        """Read every ticket's stream, in parallel if more than one; the batches in order."""
        if len(tickets) == 1:
            try:
                return self._get(tickets[0]).read_all()
            except fl.FlightError as exc:  # e.g. the share was revoked mid-stream
                raise _decode_flight_error(exc) from None
        failed = threading.Event()  # set when one stream fails: the others stop early
        clients = self._connections(len(tickets))
        with ThreadPoolExecutor(len(tickets), thread_name_prefix="ldw-flight") as pool:
            futures = [pool.submit(self._read, ticket, client, failed)
                       for ticket, client in zip(tickets, clients, strict=True)]
            try:
                for future in as_completed(futures):
                    if future.exception() is not None:
                        failed.set()
            except BaseException:  # e.g. KeyboardInterrupt: stop the streams, then raise
                failed.set()
                raise
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:  # the failure itself, not a stream stopped because of it
            raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
        return pa.concat_tables([future.result() for future in futures])

    def _read(self, ticket: str, client: fl.FlightClient, failed: threading.Event) -> pa.Table:
        """One stream as a table; cancelled (``_Stopped``) as soon as ``failed`` is set."""
        reader = self._get(ticket, client)
        batches = []
        try:
            while not failed.is_set():
                try:
                    batches.append(reader.read_chunk().data)
                except StopIteration:
                    return pa.Table.from_batches(batches, reader.schema)
        except fl.FlightError as exc:  # e.g. the share was revoked mid-stream
            raise _decode_flight_error(exc) from None
        reader.cancel()
        raise _Stopped

    def stream(self, op: str, args: dict[str, Any]) -> pa.RecordBatchReader:
        reader = self._get(self.call(op, args)["ticket"])
        return pa.RecordBatchReader.from_batches(reader.schema, _decoded(reader))

    def close(self) -> None:
        with self._data_lock:
            clients, self._data_clients = self._data_clients, []
        for client in clients:
            client.close()
        self._client.close()


def _decoded(reader: fl.FlightStreamReader) -> Iterator[pa.RecordBatch]:
    """The stream's batches; a Flight error that ends it (e.g. a revoked share) is raised
    as the ldw error it carries."""
    try:
        while True:
            try:
                yield reader.read_chunk().data
            except StopIteration:
                return
    except fl.FlightError as exc:
        raise _decode_flight_error(exc) from None


class _Stopped(Exception):
    """A parallel stream given up because another one failed."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _decode_flight_error(exc: fl.FlightError) -> LdwError:
    """The ldw error a Flight error carries in ``extra_info``; one that carries none (not
    from an ldw server, or from gRPC itself) becomes a plain LdwError with its first line."""
    return error_from_bytes(getattr(exc, "extra_info", None)) or \
        LdwError(f"ldw server error: {_first_line(exc)}")
