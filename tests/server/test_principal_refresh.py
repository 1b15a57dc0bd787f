"""The key cache checks a key in use again ahead of its expiry, off the request's path: a steady caller never waits
for the database, and a revoked key is still refused within the cache's time."""

import time

import pytest

from service.server import auth
from service.server.db import make_engine, make_sessionmaker, session_scope
from service.server.errors import Unauthorized
from tests.helpers import bearer, make_key, wait_for

TTL_S = 0.4


@pytest.fixture
def sessions(migrated):
    engine = make_engine(migrated.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_a_key_is_due_for_a_check_past_half_its_time_once_at_a_time(migrated, sessions):
    key = make_key(migrated, "ana")
    digest = auth.bearer_digest(f"Bearer {key}")
    cache = auth.PrincipalCache(sessions, ttl_s=TTL_S)
    assert not cache.due(digest)  # nothing cached: the request loads it itself
    cache.load(digest)
    assert not cache.due(digest)  # fresh
    wait_for(lambda: cache.due(digest), timeout=5, what="the key to be due")
    assert not cache.due(digest)  # claimed: one check at a time
    cache.refresh(digest)
    assert cache.cached(digest).owner == "ana" and not cache.due(digest)  # renewed


def test_a_revoked_key_is_forgotten_by_its_check_and_never_outlives_the_time_limit(migrated, sessions):
    key = make_key(migrated, "ben")
    digest = auth.bearer_digest(f"Bearer {key}")
    cache = auth.PrincipalCache(sessions, ttl_s=TTL_S)
    principal = cache.load(digest)
    revoked_at = time.monotonic()
    with session_scope(sessions) as session:
        auth.revoke_key(session, principal.key_id)
    wait_for(lambda: cache.due(digest), timeout=5, what="the key to be due")
    cache.refresh(digest)
    assert cache.cached(digest) is None
    with pytest.raises(Unauthorized):
        cache.load(digest)
    assert time.monotonic() - revoked_at < 5


def test_requests_keep_answering_while_the_key_is_checked_again_and_stop_once_it_is_revoked(migrated, client):
    key = make_key(migrated, "cleo")
    headers = bearer(key)
    client.app.state.principals.ttl_s = TTL_S
    client.app.state.rate_limiter = auth.RateLimiter(0.0, 1)  # as many requests as the loop sends (0: no limit)
    start = time.monotonic()
    while time.monotonic() - start < 3 * TTL_S:  # several refreshes ahead of expiry, every request answered
        assert client.get("/datasets", headers=headers).status_code == 200
    key_id = client.app.state.principals.cached(auth.bearer_digest(f"Bearer {key}")).key_id
    engine = make_engine(migrated.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            auth.revoke_key(session, key_id)
    finally:
        engine.dispose()
    revoked = time.monotonic()
    wait_for(lambda: client.get("/datasets", headers=headers).status_code == 401, timeout=5,
             what="the revoked key to be refused")
    assert time.monotonic() - revoked <= TTL_S + 1.0
