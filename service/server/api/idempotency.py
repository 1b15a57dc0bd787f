"""The Idempotency-Key header of POST /jobs, /datasets and /searches, as a dependency (service.server.idempotency
holds the rules and the table).

A handler takes `IdempotentJSON` (the key is claimed before it runs, from the JSON body's bytes) or
`IdempotentUpload` (the handler claims it with `begin`, once the streamed file's hash is known), answers
`replay` when there is one, and builds its answer with `respond`, which stores it in the request's transaction.
What happens to the key when the handler fails: a kept 4xx is stored as the first response (and replayed), any
other failure gives the key up so that a retry runs afresh.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.server import idempotency
from service.server.api.deps import PrincipalDep, SessionDep, SettingsDep
from service.server.config import Settings
from service.server.errors import PROBLEM_JSON, Conflict, ServiceError, problem
from service.server.idempotency import HEADER, REPLAYED_HEADER, Claim, Fingerprint, Stored

log = logging.getLogger("mlps.idempotency")

WAIT_POLL_S = 0.05
HEADER_DESCRIPTION = (
    "Makes a retry safe: the same key with the same body within 24 h (MLPS_IDEMPOTENCY_TTL_S) answers the first "
    "response again (with `Idempotent-Replayed: true`) and creates nothing new; the same key with another body is "
    "a 422. 1 to 255 printable ASCII characters, quoted or bare (a UUID is a good key); keys are per owner.")
KeyHeader = Annotated[str | None, Header(alias=HEADER, description=HEADER_DESCRIPTION,
                                         examples=['"8e03978e-40d5-43e8-bc93-6894a57f9324"'])]


class Idempotency:
    """One request's Idempotency-Key (without one, `begin` and `respond` just build the answer)."""

    def __init__(self, request: Request, session: Session, settings: Settings, owner: str,
                 key: str | None) -> None:
        self.request = request
        self.session = session
        self.settings = settings
        self.owner = owner
        self.key = key
        self.claim: Claim | None = None
        self.replay: Response | None = None
        self._answered = False
        self._transient = False

    async def begin(self, fingerprint: Fingerprint) -> Response | None:
        """Claim the key for this request; or, when a request with it came first, wait (at most
        MLPS_IDEMPOTENCY_WAIT_S) for its answer and return that, to be sent as it is."""
        if self.key is None:
            return None
        sessions = self.request.app.state.sessions
        deadline = time.monotonic() + self.settings.idempotency_wait_s
        while True:
            outcome = await run_in_threadpool(idempotency.try_claim, sessions=sessions, owner=self.owner,
                                              key=self.key, fingerprint=fingerprint,
                                              pending_s=self.settings.idempotency_pending_s)
            if isinstance(outcome, Claim):
                self.claim = outcome
                return None
            if isinstance(outcome, Stored):
                self.replay = self._replayed(outcome)
                return self.replay
            if time.monotonic() >= deadline:
                raise Conflict(f"a request with this {HEADER} is still in progress; retry it in a moment with "
                               "the same key to get its answer", headers={"Retry-After": "1"},
                               errors=[{"field": HEADER, "message": "the first request with this key has not "
                                                                    "finished yet"}])
            await asyncio.sleep(WAIT_POLL_S)

    def respond(self, content: BaseModel, status_code: int, headers: dict[str, str] | None = None) -> Response:
        """The answer to send; with a key, also stored as its first response in the request's transaction (run in
        a worker thread: it writes to the database)."""
        body = content.model_dump_json(by_alias=True)
        sent = {**(headers or {}), "content-type": "application/json"}
        if self.claim is not None:
            idempotency.record(session=self.session, claim=self.claim, status_code=status_code, headers=sent,
                               body=body, ttl_s=self.settings.idempotency_ttl_s)
            self._on("on_rollback", self._release)  # the commit failed: nothing was created, the key is free
        self._answered = True
        return Response(content=body, status_code=status_code, headers=sent)

    def transient(self) -> None:
        """The error about to be raised says nothing about the request (e.g. its client went away): a retry with
        the key runs afresh rather than getting this answer again."""
        self._transient = True

    def _replayed(self, stored: Stored) -> Response:
        body = stored.body
        if stored.headers.get("content-type") == PROBLEM_JSON:  # its request id is this request's
            body = json.dumps({**json.loads(body), "request_id": getattr(self.request.state, "request_id", None)})
        return Response(content=body, status_code=stored.status_code,
                        headers={**stored.headers, REPLAYED_HEADER: "true"})

    def failed(self, exc: BaseException) -> None:
        """The handler (or the validation of its request) raised: keep the answer or give the key up once the
        request's transaction has rolled back."""
        if self.claim is None:
            return
        if (isinstance(exc, ServiceError) and exc.status < 500 and exc.status not in idempotency.TRANSIENT_STATUSES
                and not self._transient):
            answer = problem(exc.status, exc.slug, exc.title, exc.detail, self.request, exc.errors, exc.headers)
            headers = {**exc.headers, "content-type": PROBLEM_JSON}
            claim, body = self.claim, bytes(answer.body).decode()

            def keep() -> None:
                idempotency.keep(sessions=self.request.app.state.sessions, claim=claim, status_code=exc.status,
                                 headers=headers, body=body, ttl_s=self.settings.idempotency_ttl_s)

            self._on("on_rollback", keep)
        else:
            self._on("on_rollback", self._release)

    def finished(self) -> None:
        if self.claim is not None and not self._answered:  # returned without an answer to store
            self._on("on_commit", self._release)

    def _release(self) -> None:
        # Runs after the request's commit or rollback: a failure here must not turn its answer into a 500; the
        # key's pending row expires after MLPS_IDEMPOTENCY_PENDING_S instead.
        if self.claim is None:
            return
        try:
            idempotency.release(sessions=self.request.app.state.sessions, claim=self.claim)
        except SQLAlchemyError:
            log.exception("an idempotency key could not be given up; it expires as abandoned instead")

    def _on(self, event: str, action: Callable[[], None]) -> None:
        # The request's session runs these after its commit or rollback (api.deps.get_session), so that a write
        # here never waits on the request's own transaction.
        self.session.info.setdefault(event, []).append(action)


async def idempotent_json(request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                          _key: KeyHeader = None) -> AsyncIterator[Idempotency]:
    """For a JSON body: the key is claimed (or its first answer found) before the handler runs."""
    idem = Idempotency(request, session, settings, principal.owner,
                       idempotency.parse_key(request.headers.getlist(HEADER)))
    if idem.key is not None:
        # FastAPI has read the body already (to validate it); this is the same cached bytes.
        await idem.begin(Fingerprint.of_body(request.method, request.url.path, await request.body()))
    # The session is a sub-dependency, entered first: this exits before it commits or rolls back.
    try:
        yield idem
    except BaseException as exc:
        idem.failed(exc)
        raise
    else:
        idem.finished()


async def idempotent_upload(request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                            _key: KeyHeader = None) -> AsyncIterator[Idempotency]:
    """For a streamed upload: the handler calls `begin` once the file is received and hashed."""
    idem = Idempotency(request, session, settings, principal.owner,
                       idempotency.parse_key(request.headers.getlist(HEADER)))
    # The session is a sub-dependency, entered first: this exits before it commits or rolls back.
    try:
        yield idem
    except BaseException as exc:
        idem.failed(exc)
        raise
    else:
        idem.finished()


IdempotentJSON = Annotated[Idempotency, Depends(idempotent_json, scope="function")]
IdempotentUpload = Annotated[Idempotency, Depends(idempotent_upload, scope="function")]
