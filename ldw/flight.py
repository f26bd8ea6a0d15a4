"""Arrow Flight for remote clients: the server endpoint and the client backend.

Every call is authenticated by middleware (``authorization: Bearer <token>``, checked against
the catalog's token hashes) and fails closed. Operations are Flight actions with JSON bodies;
their results stream back as JSON frames (progress, then the final result). Data moves with
``do_get`` on opaque, single-use, short-lived tickets issued by the ``attach`` and ``scan``
actions to the same user; a ticket is random bytes, never a description the server parses.

A remote attach asks for several streams (``"streams": N``): the server answers with up to N
tickets, each for a contiguous run of the version's record batches, and the client reads them on
parallel connections and joins them in order. Every stream re-checks access before each batch.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.flight as fl

from ldw.errors import AccessDenied, ConfigError, InvalidMapping, LdwError, ServerUnavailable
from ldw.store import Progress
from ldw.wire import (
    MAX_REQUEST,
    decode_error,
    encode_error,
    final_result,
    progress_to_json,
)

if TYPE_CHECKING:
    from ldw.server import Server

__all__ = ["FlightBackend", "FlightEndpoint"]

log = logging.getLogger("ldw.flight")

TICKET_TTL = 300.0  # seconds a ticket stays valid
_MAX_TICKETS = 10_000
MAX_STREAMS = 8  # tickets one attach may ask for
_MIN_STREAM_BYTES = 4 << 20  # a smaller dataset (or share of one) is not worth another stream


class _Auth(fl.ServerMiddleware):
    def __init__(self, user: str) -> None:
        self.user = user


class _AuthFactory(fl.ServerMiddlewareFactory):
    """Token check on every call, before any handler runs."""

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self.lookup = lookup

    def start_call(self, info: fl.CallInfo, headers: dict[str, list[str]]) -> _Auth:
        values = headers.get("authorization", [])
        token = values[0].removeprefix("Bearer ").strip() if values else ""
        user = self.lookup(token) if token else None
        if user is None:
            raise fl.FlightUnauthenticatedError("a valid ldw token is required "
                                                "(create one with `ldw user add NAME`)")
        return _Auth(user)


def _flight_error(exc: BaseException) -> fl.FlightError:
    """A Flight error whose detail is the JSON of the ldw error (no traceback, no secrets)."""
    detail = json.dumps(encode_error(exc))
    if isinstance(exc, AccessDenied):
        return fl.FlightUnauthorizedError(detail)
    return fl.FlightServerError(detail)


class FlightEndpoint(fl.FlightServerBase):
    """The server's TCP face: the same :class:`~ldw.service.Service` as the Unix socket."""

    def __init__(self, server: Server) -> None:
        settings = server.settings
        parsed = urlparse(settings.listen)
        tls = settings.tls_cert is not None
        if parsed.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or not parsed.hostname:
            raise ConfigError(f"listen = {settings.listen!r}: write grpc://HOST:PORT "
                              "(grpc+tls:// with tls_cert and tls_key)")
        if parsed.scheme == "grpc+tls" and not tls:
            raise ConfigError("listen uses grpc+tls:// but tls_cert/tls_key are not set")
        if not tls and not _loopback(parsed.hostname):
            log.warning("Flight listens on %s without TLS: tokens travel in clear text",
                        parsed.hostname)
        scheme = "grpc+tls" if tls else "grpc+tcp"
        certificates = []
        if tls:
            certificates = [fl.CertKeyPair(settings.tls_cert.read_bytes(),
                                           settings.tls_key.read_bytes())]
        super().__init__(f"{scheme}://{parsed.hostname}:"
                         f"{8815 if parsed.port is None else parsed.port}",
                         tls_certificates=certificates,
                         middleware={"auth": _AuthFactory(server.engine.catalog.user_for_token)})
        self.owner = server
        host = parsed.hostname
        self.address = f"{'grpc+tls' if tls else 'grpc'}://{host}:{self.port}"
        self._tickets: dict[bytes, tuple[float, str, _StreamFactory]] = {}
        self._lock = threading.Lock()

    def _user(self, context: fl.ServerCallContext) -> str:
        middleware = context.get_middleware("auth")
        if middleware is None:  # cannot happen: the factory refuses unauthenticated calls
            raise fl.FlightUnauthenticatedError("not authenticated")
        return middleware.user

    def _issue(self, user: str, *streams: _StreamFactory) -> list[str]:
        """One single-use ticket per stream, for ``user`` only; all of them or none."""
        tickets = [secrets.token_bytes(24) for _ in streams]
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (t, _, _) in self._tickets.items() if now - t > TICKET_TTL]:
                del self._tickets[key]
            if len(self._tickets) + len(tickets) > _MAX_TICKETS:
                raise LdwError("too many outstanding tickets; read or drop pending streams")
            for ticket, stream in zip(tickets, streams, strict=True):
                self._tickets[ticket] = (now, user, stream)
        return [ticket.hex() for ticket in tickets]

    def list_actions(self, context: fl.ServerCallContext) -> list[tuple[str, str]]:
        from ldw.service import OPS  # noqa: PLC0415

        actions = [(op, (getattr(fn, "__doc__", None) or op).strip().splitlines()[0])
                   for op, fn in sorted(OPS.items())]
        return actions + [("attach", "cache if needed; returns info and a do_get ticket"),
                          ("scan", "read from the source with pushdown; returns a ticket"),
                          ("sql", "SQL over my datasets; returns a ticket")]

    def do_action(self, context: fl.ServerCallContext, action: fl.Action) -> Iterator[bytes]:
        user = self._user(context)
        body = action.body.to_pybytes() if action.body is not None else b"{}"
        if len(body) > MAX_REQUEST:
            raise _flight_error(InvalidMapping(f"request larger than {MAX_REQUEST} bytes"))
        try:
            args = json.loads(body or b"{}")
            if not isinstance(args, dict):
                raise ValueError
        except ValueError:
            raise _flight_error(InvalidMapping("action body must be a JSON object")) from None
        return self._run_action(user, action.type, args, context)

    def _run_action(self, user: str, op: str, args: dict[str, Any],
                    context: fl.ServerCallContext | None = None) -> Iterator[bytes]:
        """Run the operation in a worker, streaming its progress frames as they happen."""
        from ldw.service import STREAM_OPS  # noqa: PLC0415

        service = self.owner.service
        events: queue.Queue = queue.Queue(maxsize=256)

        def progress(event: Progress) -> None:
            events.put({"progress": progress_to_json(event)})

        def work() -> None:
            try:
                if op == "attach":
                    result = self._attach(user, args, progress)
                elif op in STREAM_OPS:
                    watch = _CallWatch()  # a query stops when the call it serves is cancelled
                    with watch.during(context):
                        reader = service.stream(user, op, args, client_gone=watch.gone)
                    result = {"ticket": self._issue(
                        user, lambda get: fl.GeneratorStream(reader.schema,
                                                             _watched(reader, watch, get)))[0]}
                else:
                    result = service.call(user, op, args, progress)
                events.put({"ok": True, "result": result})
            except Exception as exc:
                if not isinstance(exc, LdwError):
                    log.exception("action %s failed", op)
                events.put({"ok": False, "error": encode_error(exc)})

        threading.Thread(target=work, name=f"ldw-action-{op}", daemon=True).start()
        while True:
            event = events.get()
            yield json.dumps(event).encode()
            if "progress" not in event:
                return

    def _attach(self, user: str, args: dict[str, Any],
                progress: Callable[[Progress], None]) -> dict[str, Any]:
        """Cache if needed; the info plus ``ticket`` (one stream) or ``tickets`` (``streams``)."""
        streams = args.pop("streams", None)
        if streams is not None and (type(streams) is not int
                                    or not 1 <= streams <= MAX_STREAMS):
            raise InvalidMapping(f"streams must be an integer from 1 to {MAX_STREAMS}")
        info, table = self.owner.service.attach_table(user, args, progress)
        engine, owner, name = self.owner.engine, info["owner"], info["name"]

        def still_allowed() -> None:  # a revoked share or role ends every stream
            engine.readable(user, owner, name)

        def stream(batches: list[pa.RecordBatch]) -> _StreamFactory:
            return lambda _get: fl.GeneratorStream(table.schema, _checked(batches, still_allowed))

        batches = table.to_batches()
        if streams is None:
            info["ticket"] = self._issue(user, stream(batches))[0]
        else:
            info["tickets"] = self._issue(user, *map(stream, _split(batches, streams)))
        return info

    def do_get(self, context: fl.ServerCallContext, ticket: fl.Ticket) -> fl.FlightDataStream:
        user = self._user(context)
        with self._lock:  # only its own user can redeem (and so use up) a ticket
            entry = self._tickets.get(ticket.ticket)
            if entry is not None and entry[1] == user:
                del self._tickets[ticket.ticket]
            else:
                entry = None
        if entry is None or time.monotonic() - entry[0] > TICKET_TTL:
            raise _flight_error(AccessDenied("unknown, used or expired ticket; attach again"))
        return entry[2](context)


    # -- what ldw does not offer: refused plainly (no Python traceback reaches a client) -----
    def _unsupported(self, what: str) -> fl.FlightError:
        return fl.FlightServerError(json.dumps(encode_error(InvalidMapping(
            f"ldw does not {what}; use the actions (list_actions) and their tickets"))))

    def do_put(self, context: fl.ServerCallContext, descriptor: fl.FlightDescriptor,
               reader: fl.MetadataRecordBatchReader, writer: fl.FlightMetadataWriter) -> None:
        self._user(context)
        raise self._unsupported("accept uploaded data")

    def do_exchange(self, context: fl.ServerCallContext, descriptor: fl.FlightDescriptor,
                    reader: fl.MetadataRecordBatchReader,
                    writer: fl.MetadataRecordBatchWriter) -> None:
        self._user(context)
        raise self._unsupported("exchange data")

    def list_flights(self, context: fl.ServerCallContext, criteria: bytes) -> Iterator:
        self._user(context)
        return iter(())

    def get_flight_info(self, context: fl.ServerCallContext,
                        descriptor: fl.FlightDescriptor) -> fl.FlightInfo:
        self._user(context)
        raise self._unsupported("describe flights by descriptor")

    def get_schema(self, context: fl.ServerCallContext,
                   descriptor: fl.FlightDescriptor) -> fl.SchemaResult:
        self._user(context)
        raise self._unsupported("describe schemas by descriptor")


# A ticket's stream, made when the ticket is redeemed (given the do_get call's context).
_StreamFactory = Callable[[fl.ServerCallContext], fl.FlightDataStream]


class _CallWatch:
    """Whether the Flight call a SQL query serves was cancelled by its client.

    The call's context is only valid while that call runs, so it is asked only inside
    :meth:`during`, whose exit waits for a check in progress.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: fl.ServerCallContext | None = None

    @contextlib.contextmanager
    def during(self, context: fl.ServerCallContext | None) -> Iterator[None]:
        with self._lock:
            self._context = context
        try:
            yield
        finally:
            with self._lock:
                self._context = None

    def gone(self) -> bool:
        with self._lock:
            return self._context is not None and self._context.is_cancelled()


def _watched(reader: pa.RecordBatchReader, watch: _CallWatch,
             context: fl.ServerCallContext) -> Iterator[pa.RecordBatch]:
    """``reader``'s batches; while one is computed, a cancelled call stops the query."""
    try:
        while True:
            with watch.during(context):
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except LdwError as exc:
                    raise _flight_error(exc) from None
            yield batch
    finally:
        reader.close()


def _checked(batches: list, check: Callable[[], None]) -> Iterator:
    """The batches, re-checking access before each one; a refusal ends the stream."""
    for batch in batches:
        try:
            check()
        except LdwError as exc:
            raise _flight_error(exc) from None
        yield batch


def _split(batches: Sequence[pa.RecordBatch], streams: int) -> list[list[pa.RecordBatch]]:
    """At most ``streams`` contiguous, non-empty runs of whole batches of about equal size, in
    order (always at least one run). Batches are never sliced: a slice of a ``string_view``
    column still references, and so would send, all of its data buffers."""
    sizes = [batch.nbytes for batch in batches]
    total = sum(sizes)
    count = max(1, min(streams, len(batches), total // _MIN_STREAM_BYTES))
    runs: list[list[pa.RecordBatch]] = [[]]
    done = 0
    for index, (batch, size) in enumerate(zip(batches, sizes, strict=True)):
        runs[-1].append(batch)
        done += size
        left, wanted = len(batches) - index - 1, count - len(runs)
        if wanted and left and (done * count >= total * len(runs) or left <= wanted):
            runs.append([])
    return runs


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FlightBackend:
    """A remote client: JSON actions and ``do_get`` streams over Flight, with a token.

    ``streams`` is how many parallel streams (each on its own connection) an attach asks for;
    the server may send fewer. Two or more keep both sides of a loopback transfer busy.
    """

    def __init__(self, url: str, *, token: str | None,
                 tls_root_certs: str | os.PathLike[str] | None = None) -> None:
        if not token:
            token = os.environ.get("LDW_TOKEN")
        if not token:
            raise ConfigError("a remote ldw server needs a token: connect(url, token=...) or "
                              "$LDW_TOKEN (the server's owner creates one: `ldw user add NAME`)")
        parsed = urlparse(url)
        if parsed.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or not parsed.hostname:
            raise ConfigError(f"{url!r} is not an ldw server address; write grpc://host:port")
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
               ) -> tuple[dict[str, Any], pa.Table]:
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
        return self._get(self.call(op, args)["ticket"]).to_reader()

    def close(self) -> None:
        with self._data_lock:
            clients, self._data_clients = self._data_clients, []
        for client in clients:
            client.close()
        self._client.close()


class _Stopped(Exception):
    """A parallel stream given up because another one failed."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _decode_flight_error(exc: fl.FlightError) -> LdwError:
    text = str(exc)
    start = text.find("{")
    if start >= 0:
        try:
            return decode_error(json.JSONDecoder().raw_decode(text[start:])[0])
        except ValueError:
            pass
    return LdwError(f"ldw server error: {_first_line(exc)}")
