"""Idempotency keys: a POST retried with the same `Idempotency-Key` answers the first response and creates nothing
new (the IETF draft "The Idempotency-Key HTTP Header Field").

A key belongs to its owner. The first request with it inserts a `pending` row holding its fingerprint (method,
path, sha256 of the body); the unique (owner, key) constraint lets exactly one of several concurrent requests do
so, in any API process and on SQLite or PostgreSQL alike. The others wait for it (service.server.api.idempotency):
once its response is stored (`done`, in the transaction that created the resource) they answer that response. A
row whose `expires_at` has passed counts as absent: the next request takes the key over, and the reaper deletes it.
"""

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.server.db import session_scope, utcnow
from service.server.errors import Conflict, InvalidInput
from service.server.tables import IdempotencyKey, IdempotencyState

log = logging.getLogger("mlps.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# A 4xx answer about the request itself (its body, its data set) is kept and replayed; these depend on the moment
# (a conflict with a resource's state, a rate or job limit), so a retry with the key runs afresh. A 5xx is never kept.
TRANSIENT_STATUSES = frozenset({408, 409, 423, 425, 429})
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')  # RFC 8941 sf-string
_TOKEN = re.compile(r"[\x21-\x7e]+")  # a bare key, as many clients send it: visible ASCII without spaces


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"{HEADER}: {message}", errors=[{"field": HEADER, "message": message}])


def parse_key(values: list[str]) -> str | None:
    """The key a request carries (None: it sends none): one header, a quoted string as the draft writes it
    (`"8e03978e-..."`) or bare, of 1 to 255 printable ASCII characters; anything else is InvalidInput."""
    if not values:
        return None
    if len(values) > 1:
        raise _invalid("send one Idempotency-Key header, not several")
    raw = values[0].strip(" \t")
    if any(ord(ch) > 0x7E or ord(ch) < 0x20 for ch in raw):
        raise _invalid("the key must be printable ASCII (a UUID such as "
                       '"8e03978e-40d5-43e8-bc93-6894a57f9324" is a good one)')
    if raw.startswith('"'):
        quoted = _SF_STRING.fullmatch(raw)
        if quoted is None:
            raise _invalid('a quoted key must end with " and escape only \\ and " inside')
        key = re.sub(r"\\(.)", r"\1", quoted.group(1))
    elif raw and not _TOKEN.fullmatch(raw):
        raise _invalid('a key with spaces must be quoted: "my key"')
    else:
        key = raw
    if not key:
        raise _invalid("the key is empty; send 1 to 255 characters, e.g. a UUID")
    if len(key) > MAX_KEY_CHARS:
        raise _invalid(f"the key has {len(key)} characters, more than the {MAX_KEY_CHARS} accepted")
    return key


@dataclass(frozen=True)
class Fingerprint:
    """What makes a retry the same request: its method, path and the sha256 of its body."""

    method: str
    path: str
    body_sha256: str

    @classmethod
    def of_body(cls, method: str, path: str, body: bytes) -> "Fingerprint":
        return cls(method, path, hashlib.sha256(body).hexdigest())

    @classmethod
    def of_upload(cls, method: str, path: str, *, file_sha256: str, filename: str | None,
                  fields: Mapping[str, str]) -> "Fingerprint":
        """A streamed multipart upload: the hash of its file's bytes (taken as they arrived), its file name and its
        other form fields (the multipart boundary differs between two sends of the same upload)."""
        parts = json.dumps({"file_sha256": file_sha256, "filename": filename, "fields": dict(sorted(fields.items()))},
                           sort_keys=True)
        return cls(method, path, hashlib.sha256(parts.encode()).hexdigest())


@dataclass(frozen=True)
class Claim:
    """This request holds the key: it goes on, and its answer becomes the key's first response."""

    row_id: int
    token: str
    created_at: datetime


@dataclass(frozen=True)
class Stored:
    """The first response with this key: status, headers (its content type included) and body as sent."""

    status_code: int
    headers: dict[str, str]
    body: str


def try_claim(*, sessions: sessionmaker[Session], owner: str, key: str, fingerprint: Fingerprint,
              pending_s: float) -> Claim | Stored | None:
    """Claim the key for this request, or answer its first response; None: a request with the key is still in
    progress. InvalidInput when the key was first used for another request (method, path or body)."""
    for _ in range(3):  # a lost race against an expiry or a release: try again at once
        now = utcnow()
        token = uuid.uuid4().hex
        try:
            with session_scope(sessions) as session:
                row = IdempotencyKey(owner=owner, key=key, token=token, method=fingerprint.method,
                                     path=fingerprint.path, body_sha256=fingerprint.body_sha256,
                                     state=IdempotencyState.PENDING, created_at=now,
                                     expires_at=now + timedelta(seconds=pending_s))
                session.add(row)
                session.flush()
                return Claim(row_id=row.id, token=token, created_at=now)
        except IntegrityError:
            pass  # the key is taken: read what its first request left
        with session_scope(sessions) as session:
            found = session.scalars(select(IdempotencyKey).where(IdempotencyKey.owner == owner,
                                                                 IdempotencyKey.key == key)).one_or_none()
            if found is None:
                continue
            if found.expires_at <= now:
                session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == found.id,
                                                             IdempotencyKey.expires_at <= now))
                continue
            _check_same_request(found, fingerprint)
            if found.state == IdempotencyState.DONE and found.status_code is not None:
                return Stored(status_code=found.status_code, headers=dict(found.response_headers or {}),
                              body=found.response_body or "")
            return None
    return None


def _check_same_request(row: IdempotencyKey, fingerprint: Fingerprint) -> None:
    if (row.method, row.path) != (fingerprint.method, fingerprint.path):
        raise _invalid(f"this key was first used for {row.method} {row.path}; send a new key for a new request")
    if row.body_sha256 != fingerprint.body_sha256:
        raise _invalid("the body differs from the first request's with this key; a retry must send the same "
                       "body, a new request a new key")


def record(*, session: Session, claim: Claim, status_code: int, headers: Mapping[str, str], body: str,
           ttl_s: float) -> None:
    """Store the response as the key's first one, in `session`'s transaction (the one that created the resource,
    so that both are kept or neither). Conflict when the claim was lost (taken over as abandoned): rolling back
    keeps the resource from existing twice."""
    result = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claim.row_id, IdempotencyKey.token == claim.token,
               IdempotencyKey.state == IdempotencyState.PENDING)
        .values(state=IdempotencyState.DONE, status_code=status_code, response_headers=dict(headers),
                response_body=body, expires_at=claim.created_at + timedelta(seconds=ttl_s)))
    if getattr(result, "rowcount", 0) != 1:
        raise Conflict("this request ran longer than MLPS_IDEMPOTENCY_PENDING_S and another with the same "
                       f"{HEADER} took it over; nothing was created by this one",
                       errors=[{"field": HEADER, "message": "the key was taken over by a retry"}])


def release(*, sessions: sessionmaker[Session], claim: Claim) -> None:
    """Give the key up (the request failed in a way a retry may not meet): the next request with it runs afresh."""
    with session_scope(sessions) as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == claim.row_id,
                                                     IdempotencyKey.token == claim.token,
                                                     IdempotencyKey.state == IdempotencyState.PENDING))


def keep(*, sessions: sessionmaker[Session], claim: Claim, status_code: int, headers: Mapping[str, str], body: str,
         ttl_s: float) -> None:
    """Store an error answer (a 4xx about the request) as the key's first response, in a transaction of its own.
    It runs after the request's rollback, so a failure here is logged, never sent: the request still answers its
    4xx, and the key's pending row expires after MLPS_IDEMPOTENCY_PENDING_S."""
    try:
        with session_scope(sessions) as session:
            record(session=session, claim=claim, status_code=status_code, headers=headers, body=body, ttl_s=ttl_s)
    except Conflict:
        log.warning("the idempotency key of a failed request was taken over before its answer was stored")
    except SQLAlchemyError:
        log.exception("the answer of a failed request could not be stored under its idempotency key")


def expire(*, session: Session) -> int:
    """Delete the keys whose time is up (their TTL, or a pending request's abandonment); the reaper calls it."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)
