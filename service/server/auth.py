"""API keys: create, list, revoke, bootstrap the first admin key, authenticate a request; and the per-key
request-rate limiter.

A key is `mlps_` + 43 random URL-safe characters (256 bits). Only its SHA-256 is stored: a key this random
needs no slow hash, and the lookup by hash is one indexed query.
"""

import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVarTuple

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.server.db import session_scope, utcnow
from service.server.errors import NotFound, TooManyRequests, Unauthorized
from service.server.queue import new_id
from service.server.tables import ADMIN_OWNER, ApiKey, Dataset, Job, Model

log = logging.getLogger("mlps.auth")

KEY_PREFIX = "mlps_"
ADMIN_KEY_FILE = "admin.key"
# The web page's sign-in keeps the key in this cookie (HttpOnly, SameSite=Strict), an alternative to the header.
SESSION_COOKIE = "mlps_session"
# last_used_at is written at most this often per key, so that reads do not turn into writes.
LAST_USED_EVERY = timedelta(minutes=1)


# One message for a missing, malformed, unknown or revoked key: which part failed is not the caller's business.
UNAUTHORIZED = ("a valid API key is required: send 'Authorization: Bearer <key>' "
                "(an administrator creates keys with `mlps keys create`)")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its owner and whether it may see everything."""

    key_id: str
    owner: str
    admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise ValueError("a key name is 1-64 letters, digits or -_.@ (it names the owner)")
    return name


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query).all())


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKey:
    """Revoke the key with this id or key prefix; API processes refuse it within PrincipalCache.ttl_s."""
    row = session.get(ApiKey, key_id_or_prefix)
    if row is None:
        matches = session.scalars(select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)).all()
        row = matches[0] if len(matches) == 1 else None
    if row is None:
        raise NotFound(f"no key with id or prefix '{key_id_or_prefix}'; `mlps keys list` shows them")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def check_key_format(key: str) -> None:
    if not key.startswith(KEY_PREFIX) or not 40 <= len(key) <= 128 or not all(c.isalnum() or c in "-_" for c in key):
        raise ValueError(f"an API key is '{KEY_PREFIX}' then letters, digits, - or _, 40 to 128 characters in all "
                         "(`python3 -c \"import secrets; print('mlps_' + secrets.token_urlsafe(32))\"` makes one)")


def create_key(session: Session, *, name: str, admin: bool = False, key: str | None = None) -> tuple[ApiKey, str]:
    """A new key for owner `name` (random unless given); returns the row and the key, which is not stored and
    cannot be shown again."""
    if key is None:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
    check_key_format(key)
    row = ApiKey(id=new_id("key"), name=_clean_name(name), prefix=key[:12], key_hash=hash_key(key), admin=admin)
    session.add(row)
    session.flush()
    return row, key


def bootstrap_admin_key(session: Session, data_dir: Path, preset: str | None = None) -> str | None:
    """On a database with no usable admin key, create one (`preset`, or random) and write it to
    <data_dir>/admin.key (mode 0600).

    Returns the new key, or None when an admin key already exists (then nothing is written).
    """
    exists = session.scalar(select(ApiKey.id).where(ApiKey.admin.is_(True), ApiKey.revoked_at.is_(None)).limit(1))
    if exists:
        return None
    _, key = create_key(session, name=ADMIN_OWNER, admin=True, key=preset or None)
    write_key_file(data_dir / ADMIN_KEY_FILE, key)
    return key


def write_key_file(path: Path, key: str) -> None:
    """Write a key readable by its owner only; the file never exists with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key_file(path: Path) -> str | None:
    try:
        key = path.read_text().strip()
    except OSError:
        return None
    return key or None


def bearer_digest(authorization: str | None) -> str:
    """The SHA-256 of the key in an `Authorization: Bearer` header, or Unauthorized when there is none."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX) or len(key) > 128:
        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return hash_key(key)


def request_digest(authorization: str | None, session_cookie: str | None) -> str:
    """The SHA-256 of the caller's key: from the Authorization header, else from the web page's session cookie (the
    same key, kept by the browser in an HttpOnly cookie); Unauthorized when neither holds one."""
    if authorization is None and session_cookie:
        return bearer_digest(f"Bearer {session_cookie}")
    return bearer_digest(authorization)


def authenticate(session: Session, digest: str) -> Principal:
    """The caller whose key has this SHA-256 (see bearer_digest), or Unauthorized."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        raise Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return Principal(key_id=row.id, owner=row.name, admin=row.admin)


class PrincipalCache:
    """Keys found valid in the last `ttl_s` seconds, so that most requests authenticate without a database
    round trip; a revoked key is refused within `ttl_s` seconds by every API process.

    A key in use is checked again ahead of its expiry (`due`, then `refresh` off the request's path), so that a
    steady caller never waits for the database: the answer it gets is still never older than `ttl_s`."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = 1.0) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[Principal, float]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def cached(self, digest: str) -> Principal | None:
        """The caller if its key was checked recently (no I/O); None means call load()."""
        with self._lock:
            hit = self._items.get(digest)
        return hit[0] if hit is not None and time.monotonic() < hit[1] else None

    def due(self, digest: str) -> bool:
        """Whether this cached key is past half its time and no check of it is running; True claims that check,
        which the caller runs with refresh()."""
        with self._lock:
            hit = self._items.get(digest)
            if hit is None or digest in self._refreshing or time.monotonic() < hit[1] - self.ttl_s / 2:
                return False
            self._refreshing.add(digest)
            return True

    def refresh(self, digest: str) -> None:
        """Check a cached key again (blocking): renewed while valid, forgotten once revoked or unknown."""
        try:
            self.load(digest)
        except Unauthorized:
            with self._lock:
                self._items.pop(digest, None)
        except Exception:  # the database is unavailable: the entry expires as usual and the next request loads it
            log.warning("checking an API key again failed", exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(digest)

    def load(self, digest: str) -> Principal:
        """Check the key against the database (blocking) and remember the answer for ttl_s."""
        with session_scope(self.sessions) as session:
            principal = authenticate(session, digest)
        now = time.monotonic()
        with self._lock:
            if len(self._items) > 10_000:
                self._items = {d: v for d, v in self._items.items() if v[1] > now}
            self._items[digest] = (principal, now + self.ttl_s)
        return principal


class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, bursts of up to `burst`.

    Per API process; with several API replicas each enforces the rate on its own share of the traffic.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill time)
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        """Take one token for this key, or raise TooManyRequests with the seconds until one is free."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise TooManyRequests(
                    f"more than {self.rate:g} requests per second with this key; retry after {wait} s",
                    headers={"Retry-After": str(wait)})
            self._buckets[key_id] = (tokens - 1.0, now)


def can_see(principal: Principal, owner: str) -> bool:
    """Whether the caller may see a row with this owner (its own, or anything for an admin)."""
    return principal.admin or owner == principal.owner


Columns = TypeVarTuple("Columns")


def visible(query: Select[*Columns], table: type[Dataset] | type[Job] | type[Model],
            principal: Principal) -> Select[*Columns]:
    """Restrict a SELECT on an owned table to the rows the caller may see."""
    return query if principal.admin else query.where(table.owner == principal.owner)
