"""Webhooks: per-owner endpoints, a durable outbox written in the transaction of the change it reports, and the
deliverer that POSTs each event, signed as the Standard Webhooks specification says, with retries.

Signing: `webhook-id` is the event's id (the same on every attempt), `webhook-timestamp` the attempt's unix
seconds, and `webhook-signature` is `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where the key
is the base64-decoded part of the endpoint's `whsec_` secret.

Where deliveries may go (no SSRF): a URL is http or https. A host the operator lists in MLPS_WEBHOOK_ALLOW (a
name, a `*.suffix` wildcard, an address or a CIDR range) may be reached over http or https at any address; any
other host needs https, and every address its name resolves to must be public: loopback, private, link-local,
site-local, shared (100.64/10), multicast, reserved and unspecified addresses, IPv4 and IPv6 (IPv4-mapped, 6to4 and
Teredo ones also by the IPv4 address they carry), are refused. The check runs when an endpoint is created or
changed and again at every attempt, on the addresses the name resolves to then; the attempt connects to the address
that was checked.
"""

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import CursorResult, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

import service
from service.schemas import (
    SearchRead,
    WebhookCreate,
    WebhookJobData,
    WebhookPayload,
    WebhookSearchData,
    WebhookTestData,
    WebhookUpdate,
)
from service.server.config import Settings
from service.server.db import session_scope, utcnow
from service.server.errors import Conflict, InvalidInput, NotFound
from service.server.faults import Backoff
from service.server.tables import (
    Job,
    JobStatus,
    Model,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEvent,
)

log = logging.getLogger("mlps.webhooks")

SECRET_PREFIX = "whsec_"
TEST_EVENT = "webhook.test"
JOB_EVENTS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed",
              JobStatus.CANCELLED: "job.cancelled"}
BACKOFF_FACTOR = 5.0  # 5 s, 25 s, 2 min, 10 min, 52 min, then hourly (MLPS_WEBHOOK_RETRY_BASE_S = 5)
BACKOFF_CAP_S = 3600.0
DELIVERY_THREADS = 4
# One round claims no more than it sends at once, so that every claimed attempt starts (and, bounded by its
# deadline, ends) well within the claim's lease.
CLAIM_BATCH = DELIVERY_THREADS
PRUNE_EVERY_S = 3600.0
ERROR_CHARS = 300


class Caller(Protocol):
    """Who is asking (service.server.auth.Principal, which this module cannot import: auth imports the queue,
    which imports this module)."""

    @property
    def owner(self) -> str: ...

    @property
    def admin(self) -> bool: ...


# ---------------------------------------------------------------- signing


def new_secret() -> str:
    """A fresh signing secret: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The webhook-signature header's value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# ---------------------------------------------------------------- where deliveries may go


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class AllowList:
    """MLPS_WEBHOOK_ALLOW, parsed: exact names, *.suffix wildcards and networks (a bare address is a /32 or
    /128)."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str) -> "AllowList":
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for item in (part.strip().lower() for part in text.split(",")):
            if not item:
                continue
            if item.startswith("*."):
                suffixes.append(item[1:])  # ".internal.example"
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                names.add(item.rstrip("."))
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def allows_address(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def refused_reason(address: Address) -> str | None:
    """Why an address is not public (None when it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4-mapped, 6to4 and Teredo addresses reach the IPv4 address they embed: judge that one too.
        for embedded in (address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None):
            if embedded is not None and (reason := refused_reason(embedded)) is not None:
                return reason
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local  # fec0::/10, deprecated
    for reason, hit in (("loopback", address.is_loopback), ("unspecified", address.is_unspecified),
                        ("link-local", address.is_link_local), ("site-local", site_local),
                        ("multicast", address.is_multicast), ("reserved", address.is_reserved),
                        ("private", address.is_private)):
        if hit:
            return reason
    return None if address.is_global else "not public"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (None: resolve the name at delivery) and what to send as Host and SNI."""

    scheme: str
    host: str
    port: int
    explicitly_allowed: bool


def _invalid_url(message: str) -> InvalidInput:
    return InvalidInput(f"url: {message}", errors=[{"field": "url", "message": message}])


def parse_target(url: str, allow: AllowList) -> Target:
    """The URL's scheme, host and port, checked against the scheme rules and the allow list's names; InvalidInput
    naming `url` otherwise. Addresses are checked by `check_addresses`."""
    import httpx  # the URL must also be one the deliverer's HTTP client accepts (IDNA 2008 host names)

    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise _invalid_url(f"not a URL ({exc}); send e.g. https://hooks.example.com/mlps") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _invalid_url(f"the scheme must be https (or http to a host in MLPS_WEBHOOK_ALLOW), not "
                           f"'{parts.scheme or '(none)'}'")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _invalid_url("the URL names no host; send e.g. https://hooks.example.com/mlps")
    if parts.username is not None or parts.password is not None:
        raise _invalid_url("credentials in the URL are not accepted; the signature authenticates deliveries")
    address = _address(host)
    if address is None:
        try:
            host.encode("idna")  # what name resolution does: an empty or over-long label is a UnicodeError
        except UnicodeError as exc:
            raise _invalid_url(f"'{host}' is not a valid host name ({exc}); each dot-separated label has 1 to 63 "
                               "characters") from None
    allowed = allow.allows_address(address) if address is not None else allow.allows_name(host)
    if scheme == "http" and not allowed:
        raise _invalid_url(f"plain http is accepted only to a host the operator allows in MLPS_WEBHOOK_ALLOW; "
                           f"use https://{parts.netloc}{parts.path}")
    return Target(scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80),
                  explicitly_allowed=allowed)


def resolve(target: Target) -> list[Address]:
    """The addresses the target's host stands for (an address is itself); OSError when the name does not
    resolve."""
    address = _address(target.host)
    if address is not None:
        return [address]
    infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for info in infos:
        a = _address(str(info[4][0]))
        if a is not None and a not in found:
            found.append(a)
    return found


def check_addresses(target: Target, addresses: list[Address], allow: AllowList) -> str | None:
    """Why the target may not be reached at these addresses (None: every one may)."""
    if target.explicitly_allowed and _address(target.host) is None:
        return None  # a name the operator allows, at whatever address it has
    for address in addresses:
        if allow.allows_address(address):
            continue
        reason = refused_reason(address)
        if reason is not None:
            shown = target.host if str(address) == target.host else f"{target.host} resolves to {address}"
            return (f"{shown}, a {reason} address; the operator may allow it in MLPS_WEBHOOK_ALLOW"
                    if reason != "not public" else f"{shown}, which is not a public address; the operator may "
                                                   "allow it in MLPS_WEBHOOK_ALLOW")
    return None


def check_url(url: str, settings: Settings) -> None:
    """Refuse (InvalidInput naming `url`) a URL deliveries may not go to. A name that does not resolve now is
    accepted: every attempt resolves and checks it again."""
    allow = AllowList.parse(settings.webhook_allow)
    target = parse_target(url, allow)
    if target.host.endswith(".localhost") and not target.explicitly_allowed:  # RFC 6761, whether it resolves or not
        raise _invalid_url(f"{target.host} is a loopback name; the operator may allow it in MLPS_WEBHOOK_ALLOW")
    try:
        addresses = resolve(target)
    except UnicodeError as exc:
        raise _invalid_url(f"'{target.host}' is not a valid host name ({exc})") from None
    except OSError:
        return
    reason = check_addresses(target, addresses, allow)
    if reason is not None:
        raise _invalid_url(f"deliveries may not go to {reason}")


# ---------------------------------------------------------------- endpoints


def _not_found(webhook_id: str) -> NotFound:
    return NotFound(f"no webhook with id '{webhook_id}'; GET /webhooks lists them",
                    errors=[{"field": "webhook_id", "message": "unknown webhook"}])


def create(*, session: Session, caller: Caller, request: WebhookCreate, settings: Settings) -> WebhookEndpoint:
    """A new endpoint of the caller's; the secret is readable on the returned row, once."""
    check_url(request.url, settings)
    now = utcnow()
    endpoint = WebhookEndpoint(id=f"whk_{secrets.token_hex(8)}", owner=caller.owner, url=request.url,
                               events=list(dict.fromkeys(request.events)), description=request.description,
                               secret=new_secret(), enabled=True, created_at=now, updated_at=now)
    session.add(endpoint)
    session.flush()
    return endpoint


def get(*, session: Session, webhook_id: str, caller: Caller) -> WebhookEndpoint:
    """The endpoint with this id, or NotFound (also when it belongs to another owner)."""
    endpoint = session.get(WebhookEndpoint, webhook_id)
    if endpoint is None or not (caller.admin or endpoint.owner == caller.owner):
        raise _not_found(webhook_id)
    return endpoint


def list_(*, session: Session, caller: Caller, limit: int, offset: int) -> tuple[list[WebhookEndpoint], int]:
    """The caller's endpoints (an admin's: everyone's), oldest first."""
    query = select(WebhookEndpoint)
    if not caller.admin:
        query = query.where(WebhookEndpoint.owner == caller.owner)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
                           .limit(limit).offset(offset)).all()
    return list(rows), total


def update_endpoint(*, session: Session, endpoint: WebhookEndpoint, request: WebhookUpdate,
                    settings: Settings) -> WebhookEndpoint:
    """PATCH: the fields given replace the stored ones; enabling clears the reason it was disabled."""
    fields = request.model_fields_set
    for name in ("url", "events", "enabled"):
        if name in fields and getattr(request, name) is None:
            raise InvalidInput(f"{name}: may not be null", errors=[{"field": name, "message": "may not be null; "
                                                                    "leave it out to keep the stored value"}])
    if "url" in fields and request.url is not None:
        check_url(request.url, settings)
        endpoint.url = request.url
    if "events" in fields and request.events is not None:
        endpoint.events = list(dict.fromkeys(request.events))
    if "description" in fields:
        endpoint.description = request.description
    if "enabled" in fields and request.enabled is not None:
        endpoint.enabled = request.enabled
        if request.enabled:
            endpoint.disabled_reason = None
    endpoint.updated_at = utcnow()
    session.flush()
    return endpoint


def delete_endpoint(*, session: Session, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint and its delivery log."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()


def deliveries(*, session: Session, endpoint: WebhookEndpoint, state: WebhookDeliveryState | None, limit: int,
               offset: int) -> tuple[list[tuple[WebhookDelivery, str]], int]:
    """The endpoint's deliveries, newest first, each with its event's type."""
    where = [WebhookDelivery.endpoint_id == endpoint.id]
    if state is not None:
        where.append(WebhookDelivery.state == state)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where)) or 0
    rows = session.execute(select(WebhookDelivery, WebhookEvent.type)
                           .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id).where(*where)
                           .order_by(WebhookDelivery.id.desc()).limit(limit).offset(offset)).all()
    return [(d, t) for d, t in rows], total


# ---------------------------------------------------------------- the outbox


def _event(session: Session, *, owner: str, type_: str, data: BaseModel, endpoint_ids: list[str],
           at: datetime | None = None) -> WebhookEvent:
    now = utcnow()
    body = WebhookPayload(type=type_, timestamp=at or now, data=data).model_dump_json()
    event = WebhookEvent(id=f"msg_{secrets.token_hex(12)}", owner=owner, type=type_, body=body, created_at=now)
    session.add(event)
    session.flush()
    session.add_all([WebhookDelivery(event_id=event.id, endpoint_id=e, state=WebhookDeliveryState.PENDING,
                                     attempt_count=0, attempts=[], next_attempt_at=now, created_at=now)
                     for e in endpoint_ids])
    session.flush()
    return event


def _subscribed(session: Session, owners: set[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """owner -> [(endpoint id, its event types)] for the owners' enabled endpoints."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    rows = session.execute(select(WebhookEndpoint.owner, WebhookEndpoint.id, WebhookEndpoint.events)
                           .where(WebhookEndpoint.owner.in_(owners), WebhookEndpoint.enabled.is_(True))
                           .order_by(WebhookEndpoint.id)).all()
    for owner, endpoint_id, events in rows:
        found.setdefault(owner, []).append((endpoint_id, list(events)))
    return found


def jobs_ended(*, session: Session, job_ids: list[str]) -> None:
    """Queue job.succeeded / job.failed / job.cancelled for jobs that just reached that status, in the caller's
    transaction, for every enabled endpoint of their owners that wants it."""
    if not job_ids:
        return
    rows = session.execute(
        select(Job.id, Job.owner, Job.status, Job.name, Job.dataset_id, Job.search_id, Job.model_id,
               Job.latest_metrics, Model.metrics, Job.error, Job.finished_at)
        .outerjoin(Model, Model.id == Job.model_id).where(Job.id.in_(job_ids))).all()
    subscribed = _subscribed(session, {r.owner for r in rows})
    for r in rows:
        type_ = JOB_EVENTS.get(JobStatus(r.status))
        targets = [e for e, events in subscribed.get(r.owner, []) if type_ in events]
        if type_ is None or not targets:
            continue
        data = WebhookJobData(id=r.id, status=r.status, name=r.name, dataset_id=r.dataset_id, search_id=r.search_id,
                              model_id=r.model_id, metrics=r.metrics if r.status == JobStatus.SUCCEEDED
                              else r.latest_metrics, error=r.error, finished_at=r.finished_at)
        _event(session, owner=r.owner, type_=type_, data=data, endpoint_ids=targets, at=r.finished_at)


def search_finished(*, session: Session, owner: str, view: SearchRead) -> None:
    """Queue search.finished for a search that just ended, in the caller's transaction."""
    if view.status == "running":
        return
    targets = [e for e, events in _subscribed(session, {owner}).get(owner, []) if "search.finished" in events]
    if targets:
        data = WebhookSearchData(id=view.id, status=view.status, name=view.name, best=view.best,
                                 model_id=view.model_id, refit_job_id=view.refit_job_id, error=view.error,
                                 finished_at=view.finished_at)
        _event(session, owner=owner, type_="search.finished", data=data, endpoint_ids=targets, at=view.finished_at)


def send_test(*, session: Session, endpoint: WebhookEndpoint) -> WebhookDelivery:
    """Queue a webhook.test event for this endpoint alone (whatever event types it wants)."""
    if not endpoint.enabled:
        raise Conflict(f"webhook {endpoint.id} is disabled; PATCH it with enabled: true first",
                       errors=[{"field": "enabled", "message": "the webhook is disabled"}])
    data = WebhookTestData(webhook_id=endpoint.id, message="a test delivery, sent on request")
    event = _event(session, owner=endpoint.owner, type_=TEST_EVENT, data=data, endpoint_ids=[endpoint.id])
    return session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)).one()


# ---------------------------------------------------------------- delivery


def retry_delay(attempts: int, base_s: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, 5x, 25x, ... at most an hour, each
    with up to 20% jitter either way so that retries of many deliveries spread out."""
    delay = min(base_s * BACKOFF_FACTOR ** (attempts - 1), max(BACKOFF_CAP_S, base_s))
    return delay * (rng or random).uniform(0.8, 1.2)


@dataclass(frozen=True)
class Outcome:
    """One attempt's result."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process holds (until its lease runs out), with what its attempt needs."""

    delivery_id: int
    token: str
    event_id: str
    body: str
    url: str
    secret: str
    enabled: bool
    attempt: int
    event_created_at: datetime


def _rowcount(session: Session, statement: Any) -> int:
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def claim(*, session: Session, lease_s: float, limit: int = CLAIM_BATCH) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries for `lease_s` seconds: a guarded UPDATE of the due ones picked, so that
    several API processes never send one attempt twice (picked FOR UPDATE SKIP LOCKED on PostgreSQL)."""
    now = utcnow()
    due = and_(WebhookDelivery.state == WebhookDeliveryState.PENDING, WebhookDelivery.next_attempt_at <= now,
               or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
    candidates = select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    # Picked first, in a statement of its own: as a subquery of the UPDATE, PostgreSQL may run it more than once
    # and claim more than `limit` rows.
    picked = session.execute(candidates).scalars().all()
    if not picked:
        return []
    token = secrets.token_hex(16)
    ids = session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(picked), due)
                          .values(claimed_until=now + timedelta(seconds=lease_s), claim_token=token)
                          .returning(WebhookDelivery.id)).scalars().all()
    if not ids:
        return []
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempt_count, WebhookEvent.id, WebhookEvent.body,
               WebhookEvent.created_at, WebhookEndpoint.url, WebhookEndpoint.secret, WebhookEndpoint.enabled)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(ids))).all()
    return [ClaimedDelivery(delivery_id=r[0], token=token, event_id=r[2], body=r[3], url=r[5], secret=r[6],
                     enabled=r[7], attempt=r[1] + 1, event_created_at=r[4]) for r in rows]


class _Deadline:
    """Ends an attempt's connection once `seconds` have passed: httpx's timeouts bound each read, not the whole
    attempt, and a receiver that trickles its answer a byte at a time would otherwise hold it open for ever.
    Shutting the socket down wakes a blocked read at once; the attempt then reports a timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` extension: keep the connection's socket (the TLS one too) to end it on time."""
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._sockets.append(sock)
                if self.passed:
                    self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def attempt(claimed: ClaimedDelivery, settings: Settings) -> Outcome:
    """One POST of the event to its endpoint: the URL checked again on the addresses its name resolves to now, the
    connection made to the first checked address, no redirect followed, no proxy from the environment, the whole
    attempt ended after MLPS_WEBHOOK_TIMEOUT_S."""
    import httpx  # the workers import this module for the outbox only; the API alone delivers

    start = time.perf_counter()

    def done(status_code: int | None, error: str | None) -> Outcome:
        return Outcome(status_code, error[:ERROR_CHARS] if error else None,
                       round((time.perf_counter() - start) * 1000, 1))

    allow = AllowList.parse(settings.webhook_allow)
    try:
        target = parse_target(claimed.url, allow)
        addresses = resolve(target)
    except InvalidInput as exc:
        return done(None, f"refused: {exc.errors[0]['message']}")
    except (OSError, UnicodeError) as exc:
        return done(None, f"the name does not resolve ({exc})")
    reason = check_addresses(target, addresses, allow) if addresses else "an empty answer from DNS"
    if reason is not None:
        return done(None, f"refused: {reason}")
    timestamp = int(time.time())
    try:
        url = httpx.URL(claimed.url)
    except (httpx.InvalidURL, UnicodeError) as exc:  # stored before the URL rules said so
        return done(None, f"refused: not a URL ({exc})")
    host_header = url.netloc.decode().rpartition("@")[2]
    headers = {"content-type": "application/json", "user-agent": f"mlps-webhooks/{service.__version__}",
               "host": host_header, "webhook-id": claimed.event_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(claimed.secret, claimed.event_id, timestamp, claimed.body)}
    pinned = url.copy_with(host=str(addresses[0]))
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=min(5.0, settings.webhook_timeout_s))
    deadline = _Deadline(settings.webhook_timeout_s)
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    try:
        with deadline, httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", pinned, content=claimed.body.encode(), headers=headers,
                                           extensions=extensions)
            response = client.send(request, stream=True)
            response.close()  # the status is all we keep; a receiver's body is not read
    except httpx.HTTPError as exc:
        if deadline.passed:
            return done(None, f"timed out: no complete answer within {settings.webhook_timeout_s:g} s")
        return done(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    status = response.status_code
    return done(status, None if 200 <= status < 300 else f"the receiver answered {status}")


def record(*, session: Session, claimed: ClaimedDelivery, outcome: Outcome, settings: Settings) -> str:
    """Store an attempt under the claim and decide what follows: delivered, failed (out of attempts or age, 410
    Gone, which also disables the endpoint) or pending until the next attempt. Returns the new state ("lost" when
    the claim is no longer this process's: nothing is written then)."""
    held = and_(WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.claim_token == claimed.token)
    row = session.execute(select(WebhookDelivery.attempts, WebhookDelivery.endpoint_id).where(held)).one_or_none()
    if row is None:
        return "lost"  # the endpoint was deleted, or the claim ran out and another process took it
    now = utcnow()
    age_s = (now - claimed.event_created_at).total_seconds()
    state, finished_at, next_attempt_at = WebhookDeliveryState.PENDING, None, None
    if outcome.delivered:
        state, finished_at = WebhookDeliveryState.DELIVERED, now
    elif outcome.status_code == 410:
        state, finished_at = WebhookDeliveryState.FAILED, now
    else:
        wait = retry_delay(claimed.attempt, settings.webhook_retry_base_s)
        if claimed.attempt >= settings.webhook_max_attempts or age_s + wait > settings.webhook_max_age_s:
            state, finished_at = WebhookDeliveryState.FAILED, now
        else:
            next_attempt_at = now + timedelta(seconds=wait)
    logged = {"attempt": claimed.attempt, "at": now.isoformat(), "status_code": outcome.status_code,
              "error": outcome.error, "duration_ms": outcome.duration_ms}
    # Guarded by the claim's token: if the lease ran out since the read above and another process took the
    # delivery, this writes nothing.
    if not _rowcount(session, update(WebhookDelivery).where(held).values(
            attempts=[*row.attempts, logged], attempt_count=claimed.attempt, claimed_until=None, claim_token=None,
            state=state, finished_at=finished_at, next_attempt_at=next_attempt_at)):
        return "lost"
    if outcome.status_code == 410:
        session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == row.endpoint_id)
                        .values(enabled=False, updated_at=now,
                                disabled_reason=f"the receiver answered 410 Gone at {now.isoformat()}"))
        _fail_pending(session, row.endpoint_id, "the endpoint was disabled: its receiver answered 410 Gone")
    session.flush()
    return state


def _fail_pending(session: Session, endpoint_id: str, reason: str) -> None:
    """End the endpoint's other pending deliveries that no process holds now."""
    now = utcnow()
    session.execute(update(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.state == WebhookDeliveryState.PENDING,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now))
        .values(state=WebhookDeliveryState.FAILED, finished_at=now, next_attempt_at=None))
    log.info("webhook %s: %s", endpoint_id, reason)


def _disabled(*, session: Session, claimed: ClaimedDelivery) -> None:
    """A delivery claimed for an endpoint that was disabled: it ends failed, without an attempt."""
    now = utcnow()
    _rowcount(session, update(WebhookDelivery)
              .where(WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.claim_token == claimed.token)
              .values(state=WebhookDeliveryState.FAILED, finished_at=now, next_attempt_at=None, claimed_until=None,
                      claim_token=None))


def prune(*, session: Session, keep_s: float) -> int:
    """Remove ended deliveries older than `keep_s` and events left without deliveries; returns deliveries
    removed."""
    cutoff = utcnow() - timedelta(seconds=keep_s)
    removed = _rowcount(session, delete(WebhookDelivery).where(
        WebhookDelivery.state != WebhookDeliveryState.PENDING, WebhookDelivery.finished_at < cutoff))
    session.execute(delete(WebhookEvent).where(
        WebhookEvent.created_at < cutoff, ~select(WebhookDelivery.id)
        .where(WebhookDelivery.event_id == WebhookEvent.id).exists()))
    return removed


class Deliverer:
    """A background thread in each API process: every `webhook_poll_s` it claims due deliveries, sends them from a
    few threads and records each attempt. A failed round (the database down) is logged and retried with backoff;
    the thread never dies of it."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        # Longer than any attempt can take, so that a claim outlives its attempt; a crashed process's claims
        # come free after it.
        self.lease_s = 2 * settings.webhook_timeout_s + 10.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlps-webhooks", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="mlps-webhook-send")
        self._next_prune = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.settings.webhook_timeout_s + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, claimed: ClaimedDelivery) -> None:
        if not claimed.enabled:
            with session_scope(self.sessions) as session:
                _disabled(session=session, claimed=claimed)
            return
        try:
            outcome = attempt(claimed, self.settings)
        except Exception as exc:  # a bug or a URL no rule foresaw: log it as this attempt's failure, go on
            log.exception("webhook delivery %d: the attempt raised", claimed.delivery_id)
            outcome = Outcome(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], 0.0)
        with session_scope(self.sessions) as session:
            state = record(session=session, claimed=claimed, outcome=outcome, settings=self.settings)
        level = logging.INFO if state in ("delivered", "pending") else logging.WARNING
        log.log(level, "webhook delivery %d (event %s) attempt %d: %s -> %s", claimed.delivery_id, claimed.event_id,
                claimed.attempt, outcome.status_code or outcome.error, state)

    def _deliver_safely(self, claimed: ClaimedDelivery) -> bool:
        """_deliver, whose failure (the database, while recording) ends this delivery's turn, not the round's."""
        try:
            self._deliver(claimed)
        except Exception:
            log.exception("webhook delivery %d failed", claimed.delivery_id)
            return False
        return True

    def round(self) -> int:
        """One round: claim what is due, deliver it, record it; returns how many attempts were made."""
        with session_scope(self.sessions) as session:
            claimed = claim(session=session, lease_s=self.lease_s, limit=DELIVERY_THREADS)
        for delivery, sent in zip(claimed, self._pool.map(self._deliver_safely, claimed), strict=True):
            if not sent:
                log.warning("webhook delivery %d was not recorded; it is tried again once its claim runs out",
                            delivery.delivery_id)
        if time.monotonic() >= self._next_prune:
            with session_scope(self.sessions) as session:
                prune(session=session, keep_s=self.settings.webhook_keep_s)
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
        return len(claimed)

    def _run(self) -> None:
        backoff = Backoff(cap_s=30.0)
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                busy = self.round()
            except Exception as exc:
                delay = backoff.failed()
                log.warning("webhook round failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                continue
            if backoff.succeeded():
                log.info("webhook deliverer recovered")
            delay = 0.0 if busy >= DELIVERY_THREADS else self.settings.webhook_poll_s

