"""Arrow Flight for remote clients: the server endpoint (the client is :mod:`ldw.flight_client`).

Every call is authenticated by middleware (``authorization: Bearer <token>``, checked against
the catalog's token hashes) and fails closed. Operations are Flight actions with JSON bodies;
their results stream back as JSON frames (progress, then the final result). Data moves with
``do_get`` on opaque, single-use, short-lived tickets issued by the ``attach`` and ``scan``
actions to the same user; a ticket is random bytes, never a description the server parses.

Standard clients (ADBC Flight SQL, Flight SQL JDBC/ODBC drivers) are served on the same
address by :mod:`ldw.flightsql` (``get_flight_info`` with Flight SQL commands, its two
prepared-statement actions), with the same tokens, tickets and checks.

A remote attach asks for several streams (``"streams": N``): the server answers with up to N
tickets, each for a contiguous run of the version's record batches, and the client reads them on
parallel connections and joins them in order. Every stream re-checks access before each batch.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import queue
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.flight as fl

from ldw import ops
from ldw.errors import (
    AccessDenied,
    BadRequest,
    CapacityExceeded,
    ConfigError,
    LdwError,
    PolicyViolation,
    ServerUnavailable,
    UnknownDataset,
)
from ldw.flight_client import FlightBackend
from ldw.flightsql import FlightSql
from ldw.layout import standard_batch, standard_schema
from ldw.storage.parts import standalone
from ldw.types import Progress
from ldw.wire import (
    MAX_REQUEST,
    encode_error,
    error_bytes,
    progress_to_json,
)

if TYPE_CHECKING:
    from ldw.config import Settings
    from ldw.service import Service

TokenLookup = Callable[[str], "str | None"]  # token SHA-256 (hex) -> its user, or None

__all__ = ["FlightBackend", "FlightEndpoint"]  # FlightBackend: from ldw.flight_client

log = logging.getLogger("ldw.flight")

T = TypeVar("T")

TICKET_TTL = 300.0  # seconds a ticket stays valid
_MAX_TICKETS = 10_000  # all users together; each user also has a quota ([server] keys)
MAX_STREAMS = 8  # tickets one attach may ask for
_MIN_STREAM_BYTES = 4 << 20  # a smaller dataset (or share of one) is not worth another stream


class _Auth(fl.ServerMiddleware):
    def __init__(self, user: str, token: str) -> None:
        self.user = user
        self.token = token  # SHA-256 (hex) of the token the call came with


class _AuthFactory(fl.ServerMiddlewareFactory):
    """Token check on every call, before any handler runs."""

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        from ldw.catalog import hash_token  # server side only

        self.lookup = lookup  # token SHA-256 -> user
        self.hash = hash_token

    def start_call(self, info: fl.CallInfo, headers: dict[str, list[str]]) -> _Auth:
        values = headers.get("authorization", [])
        token = values[0].removeprefix("Bearer ").strip() if values else ""
        digest = self.hash(token) if token else ""
        try:
            user = self.lookup(digest) if token else None
        except Exception:
            log.exception("token lookup failed")
            raise _flight_error(ServerUnavailable("the ldw server cannot check tokens right "
                                                  "now; retry shortly")) from None
        if user is None:
            raise fl.FlightUnauthenticatedError("a valid ldw token is required "
                                                "(create one with `ldw user add NAME`)")
        if info.method == fl.FlightMethod.GET_SCHEMA:
            # pyarrow's GetSchema handler sends any error raised in it with a Python traceback;
            # refused here, the refusal travels as a plain typed error
            raise _unsupported("describe schemas by descriptor")
        return _Auth(user, digest)


def _flight_error(exc: BaseException) -> fl.FlightError:
    """A typed Flight error for any exception. ``extra_info`` carries the ldw error (JSON:
    its type and message, never a traceback, a path or a secret), which the client decodes
    (:func:`ldw.wire.error_from_bytes`); the text says the same for a person or a plain
    Flight client.

    AccessDenied and PolicyViolation are PERMISSION_DENIED (``FlightUnauthorizedError``),
    except a share that ended (``AccessRevoked``), which like every "not shared with you" is a
    ``FlightServerError``; errors that are not ldw's are an internal error, logged here."""
    if isinstance(exc, fl.FlightError):
        return exc
    if not isinstance(exc, LdwError):
        log.error("Flight call failed", exc_info=exc)
    extra = error_bytes(exc)
    error = encode_error(exc)
    detail = f"{error['type']}: {error['message']} (ldw error {extra.decode()})"
    if isinstance(exc, UnknownDataset):
        return fl.FlightServerError(detail, extra_info=extra)
    if isinstance(exc, AccessDenied | PolicyViolation):
        return fl.FlightUnauthorizedError(detail, extra_info=extra)
    if not isinstance(exc, LdwError):
        return fl.FlightInternalError(detail, extra_info=extra)
    return fl.FlightServerError(detail, extra_info=extra)


def _unsupported(what: str) -> fl.FlightError:
    return _flight_error(BadRequest(
        f"ldw does not {what}; use the actions (list_actions) and their tickets"))


def _typed_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Every Flight method: any error leaves as a typed Flight error, never a traceback."""

    @functools.wraps(method)
    def wrapper(*args: Any) -> T:
        try:
            return method(*args)
        except Exception as exc:
            raise _flight_error(exc) from None

    return wrapper


@dataclass
class _Ticket:
    """One single-use ticket: whose, under which token, and the stream it redeems."""

    created: float
    user: str
    token: str  # SHA-256 of the token of the call that asked for it
    schema: pa.Schema
    # the stream, made when the ticket is redeemed, given the do_get call's context
    batches: Callable[[fl.ServerCallContext], Iterable[pa.RecordBatch]]
    check: Callable[[], None]  # access re-check: raises once the user may no longer read it


class FlightEndpoint(fl.FlightServerBase):
    """The server's TCP face: the same :class:`~ldw.service.Service` as the Unix socket.

    Tickets are bound to their user and the token they were asked with. Each user may hold
    ``max_tickets_per_user`` unredeemed tickets and read ``max_streams_per_user`` streams at
    once ([server] keys); beyond that only that user gets ``CapacityExceeded``. Every stream
    checks the token, the user, the shares, roles and policy of what it reads when its ticket
    is redeemed and before each batch.
    """

    def __init__(self, service: Service, token_user: TokenLookup, *, listen: str,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 max_tickets: int, max_streams: int) -> None:
        parsed = urlparse(listen)
        tls = tls_cert is not None
        if parsed.scheme not in ("grpc", "grpc+tcp", "grpc+tls") or not parsed.hostname:
            raise ConfigError(f"listen = {listen!r}: write grpc://HOST:PORT "
                              "(grpc+tls:// with tls_cert and tls_key)")
        if parsed.scheme == "grpc+tls" and not tls:
            raise ConfigError("listen uses grpc+tls:// but tls_cert/tls_key are not set")
        if not tls and not _loopback(parsed.hostname):
            log.warning("Flight listens on %s without TLS: tokens travel in clear text",
                        parsed.hostname)
        scheme = "grpc+tls" if tls else "grpc+tcp"
        certificates = []
        if tls:
            if tls_key is None:
                raise ConfigError("tls_cert is set but tls_key is not; set both")
            certificates = [fl.CertKeyPair(tls_cert.read_bytes(), tls_key.read_bytes())]
        port = 8815 if parsed.port is None else parsed.port
        try:
            super().__init__(f"{scheme}://{parsed.hostname}:{port}",
                             tls_certificates=certificates,
                             middleware={"auth": _AuthFactory(token_user)})
        except pa.ArrowException as exc:  # gRPC says only "did not start properly"
            raise ServerUnavailable(_cannot_listen(listen, parsed.hostname, port, exc)) from None
        self.service = service
        self.token_user = token_user
        host = parsed.hostname
        self.address = f"{'grpc+tls' if tls else 'grpc'}://{host}:{self.port}"
        self.max_tickets = max_tickets
        self.max_streams = max_streams
        self._tickets: dict[bytes, _Ticket] = {}
        self._open: dict[str, int] = {}  # streams being read, per user
        self._lock = threading.Lock()
        self.sql = FlightSql(self)  # the Flight SQL face of the same service

    @classmethod
    def from_settings(cls, settings: Settings, service: Service,
                      token_user: TokenLookup) -> FlightEndpoint:
        """The endpoint the ``[server]`` settings describe (listen, TLS, quotas)."""
        return cls(service, token_user, listen=settings.listen, tls_cert=settings.tls_cert,
                   tls_key=settings.tls_key, max_tickets=settings.max_tickets_per_user,
                   max_streams=settings.max_streams_per_user)

    def _auth(self, context: fl.ServerCallContext) -> _Auth:
        middleware = context.get_middleware("auth")
        if middleware is None:  # cannot happen: the factory refuses unauthenticated calls
            raise fl.FlightUnauthenticatedError("not authenticated")
        return middleware

    def _user(self, context: fl.ServerCallContext) -> str:
        return self._auth(context).user

    # -- tickets and quotas ------------------------------------------------------------------
    def _prune(self, now: float) -> None:
        """Forget expired tickets (and the streams they hold); the lock is held."""
        for key in [k for k, t in self._tickets.items() if now - t.created > TICKET_TTL]:
            del self._tickets[key]

    def _room(self, user: str, wanted: int) -> None:
        """CapacityExceeded unless ``user`` may hold ``wanted`` more tickets; the lock is held."""
        held = sum(1 for t in self._tickets.values() if t.user == user)
        if held + wanted > self.max_tickets:
            raise CapacityExceeded(
                f"you hold {held} unredeemed tickets (limit {self.max_tickets}, "
                "[server] max_tickets_per_user); read them or let them expire "
                f"({TICKET_TTL:.0f}s) before asking for more")
        if len(self._tickets) + wanted > _MAX_TICKETS:
            raise CapacityExceeded("the ldw server holds too many outstanding tickets; retry "
                                   "shortly")

    def _precheck(self, user: str) -> None:
        """Refuse early (before any work) a user who could not get a ticket anyway."""
        with self._lock:
            self._prune(time.monotonic())
            self._room(user, 1)

    def issue(self, auth: _Auth, schema: pa.Schema, check: Callable[[], None],
               *streams: Callable[[fl.ServerCallContext], Iterable[pa.RecordBatch]]
               ) -> list[str]:
        """One single-use ticket per stream, for this user and token only; all or none."""
        tickets = [secrets.token_bytes(24) for _ in streams]
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            self._room(auth.user, len(tickets))
            for ticket, batches in zip(tickets, streams, strict=True):
                self._tickets[ticket] = _Ticket(now, auth.user, auth.token, schema, batches,
                                                check)
        return [ticket.hex() for ticket in tickets]

    def _token_check(self, entry: _Ticket) -> Callable[[], None]:
        token_user = self.token_user

        def check() -> None:
            if token_user(entry.token) != entry.user:
                raise AccessDenied("the token this stream was opened with was revoked or "
                                   "replaced; connect with the current token")
            entry.check()

        return check

    def _release(self, user: str) -> None:
        with self._lock:
            left = self._open.get(user, 0) - 1
            if left > 0:
                self._open[user] = left
            else:
                self._open.pop(user, None)

    # -- Flight methods ------------------------------------------------------------------------
    @_typed_errors
    def list_actions(self, context: fl.ServerCallContext) -> list[tuple[str, str]]:
        tickets = {ops.Kind.JSON: "", ops.Kind.STREAM: " (returns a do_get ticket)",
                   ops.Kind.ATTACH: " (returns the info and do_get tickets)"}
        return [(name, ops.OPS[name].summary + tickets[ops.OPS[name].kind])
                for name in ops.names()]

    @_typed_errors
    def do_action(self, context: fl.ServerCallContext, action: fl.Action) -> Iterator[bytes]:
        auth = self._auth(context)
        if self.sql.handles(action.type):
            return self.sql.do_action(auth, action)
        body = action.body.to_pybytes() if action.body is not None else b"{}"
        if len(body) > MAX_REQUEST:
            raise BadRequest(f"request larger than {MAX_REQUEST} bytes")
        try:
            args = json.loads(body or b"{}")
            if not isinstance(args, dict):
                raise ValueError
        except ValueError:
            raise BadRequest("action body must be a JSON object") from None
        return self._run_action(auth, action.type, args, context)

    def _run_action(self, auth: _Auth, op: str, args: dict[str, Any],
                    context: fl.ServerCallContext | None = None) -> Iterator[bytes]:
        """Run the operation in a worker, streaming its progress frames as they happen."""
        service, user = self.service, auth.user
        kind = ops.kind_of(op)
        events: queue.Queue = queue.Queue(maxsize=256)

        def progress(event: Progress) -> None:
            events.put({"progress": progress_to_json(event)})

        def work() -> None:
            try:
                if kind == ops.Kind.ATTACH:
                    result = self._attach(auth, args, progress)
                elif kind == ops.Kind.STREAM:
                    result = {"ticket": self.stream_ticket(auth, op, args, context)[1]}
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

    def stream_ticket(self, auth: _Auth, op: str, args: dict[str, Any],
                      context: fl.ServerCallContext | None, *, standard: bool = False
                      ) -> tuple[pa.Schema, str]:
        """Open the stream operation ``op``; its schema and a ticket for it. ``standard``:
        view columns leave as plain strings and binaries (:mod:`ldw.layout`)."""
        self._precheck(auth.user)
        watch = _CallWatch()  # a query stops when the call it serves is cancelled
        with watch.during(context):
            reader, check = self.service.open_stream(auth.user, op, args,
                                                     client_gone=watch.gone)
        schema = standard_schema(reader.schema) if standard else reader.schema
        if schema == reader.schema:
            return schema, self.issue(auth, schema, check,
                                       lambda call: _watched(reader, watch, call))[0]
        return schema, self.issue(
            auth, schema, check,
            lambda call: (standard_batch(b, schema) for b in _watched(reader, watch, call)))[0]

    def _attach(self, auth: _Auth, args: dict[str, Any],
                progress: Callable[[Progress], None]) -> dict[str, Any]:
        """Cache if needed; the info plus ``ticket`` (one stream) or ``tickets`` (``streams``)."""
        streams = args.pop("streams", None)
        if streams is not None and (type(streams) is not int
                                    or not 1 <= streams <= MAX_STREAMS):
            raise BadRequest(f"streams must be an integer from 1 to {MAX_STREAMS}")
        self._precheck(auth.user)
        service = self.service
        info, table = service.attach_table(auth.user, args, progress)
        # a revoked share or role, a changed policy or a revoked user ends every stream
        check = service.stream_check(auth.user, "attach",
                                     [(info["owner"], info["name"], info["policy"])])
        batches = table.to_batches()
        runs = [batches] if streams is None else _split(batches, streams)
        # a version leaving rows out is slices: each sends only its own strings
        tickets = self.issue(auth, table.schema, check,
                              *[(lambda _call, run=run: map(standalone, run)) for run in runs])
        if streams is None:
            info["ticket"] = tickets[0]
        else:
            info["tickets"] = tickets
        return info

    @_typed_errors
    def do_get(self, context: fl.ServerCallContext, ticket: fl.Ticket) -> fl.FlightDataStream:
        user = self._user(context)
        now = time.monotonic()
        with self._lock:  # only its own user can redeem (and so use up) a ticket
            self._prune(now)
            entry = self._tickets.get(ticket.ticket)
            if entry is None or entry.user != user:
                raise AccessDenied("unknown, used or expired ticket; attach again")
            if self._open.get(user, 0) >= self.max_streams:  # the ticket stays valid
                raise CapacityExceeded(
                    f"you are reading {self._open[user]} streams (limit {self.max_streams}, "
                    "[server] max_streams_per_user); finish or cancel one first")
            del self._tickets[ticket.ticket]
            self._open[user] = self._open.get(user, 0) + 1
        release = _Once(lambda: self._release(user))
        try:
            check = self._token_check(entry)
            check()  # at redemption, before the stream starts
            batches = _stream(entry.batches(context), check, release)
        except BaseException:
            release()
            raise
        weakref.finalize(batches, release)  # a stream gRPC never started still lets go
        return fl.GeneratorStream(entry.schema, batches)

    # -- what ldw does not offer: refused plainly (no Python traceback reaches a client) -----
    @_typed_errors
    def do_put(self, context: fl.ServerCallContext, descriptor: fl.FlightDescriptor,
               reader: fl.MetadataRecordBatchReader, writer: fl.FlightMetadataWriter) -> None:
        self._user(context)
        self.sql.refuse_upload(descriptor)  # a Flight SQL update or ingest: ldw is read-only
        raise _unsupported("accept uploaded data")

    @_typed_errors
    def do_exchange(self, context: fl.ServerCallContext, descriptor: fl.FlightDescriptor,
                    reader: fl.MetadataRecordBatchReader,
                    writer: fl.MetadataRecordBatchWriter) -> None:
        self._user(context)
        raise _unsupported("exchange data")

    @_typed_errors
    def list_flights(self, context: fl.ServerCallContext, criteria: bytes) -> Iterator:
        self._user(context)
        return iter(())

    @_typed_errors
    def get_flight_info(self, context: fl.ServerCallContext,
                        descriptor: fl.FlightDescriptor) -> fl.FlightInfo:
        return self.sql.flight_info(self._auth(context), descriptor, context)

    @_typed_errors
    def get_schema(self, context: fl.ServerCallContext,
                   descriptor: fl.FlightDescriptor) -> fl.SchemaResult:
        self._user(context)  # refused by the middleware already (see _AuthFactory)
        raise _unsupported("describe schemas by descriptor")


class _Once:
    """A callable that runs its function the first time only (thread-safe)."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function: Callable[[], None] | None = function
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            function, self._function = self._function, None
        if function is not None:
            function()


def _stream(batches: Iterable[pa.RecordBatch], check: Callable[[], None],
            release: Callable[[], None]) -> Iterator[pa.RecordBatch]:
    """The batches, access re-checked before each one; any failure ends the stream with a
    typed Flight error, and the user's stream slot is released however it ends."""
    from ldw.service import checked

    try:
        yield from checked(batches, check)
    except Exception as exc:
        raise _flight_error(exc) from None
    finally:
        release()


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
            yield batch
    finally:
        reader.close()


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


def _cannot_listen(listen: str, host: str, port: int, exc: Exception) -> str:
    """Why Flight could not listen at ``listen``, found by binding the address ourselves (gRPC
    logs the cause to stderr only), and what to do about it."""
    import socket

    reason = str(exc)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        addresses, reason = [], f"cannot resolve {host!r} ({error.strerror or error})"
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
            except OSError as error:
                reason = error.strerror or str(error)
                break
    hint = (f"another process (another ldw server?) listens on port {port}; "
            if "in use" in reason.lower() else "")
    return (f"Flight cannot listen on {listen}: {reason}; {hint}set a free port in [server] "
            f"listen = \"grpc://{host}:PORT\" (or listen = \"\" for no Flight)")
