"""Join tokens: single use (also under a race), expiry, validation, listing and revocation."""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from common.errors import InvalidArgument, NotFound
from controlplane.db.database import Database
from controlplane.db.models import AuditEvent
from controlplane.services import ControlPlaneServices
from controlplane.tokens import InvalidJoinToken, JoinTokens, TokenAlreadyUsed, TokenGrant

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
AGENT = "3f0e1c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(database: Database, clock: Clock) -> ControlPlaneServices:
    return ControlPlaneServices.build(database, clock=clock)


@pytest.fixture
def tokens(services: ControlPlaneServices) -> JoinTokens:
    return services.tokens


def consume(
    db: Database, tokens: JoinTokens, token: str, agent_id: str, now: datetime
) -> TokenGrant:
    with db.session() as session:
        return tokens.consume(session, token, agent_id=agent_id, now=now)


def reason(db: Database, tokens: JoinTokens, token: str, now: datetime = T0) -> str:
    with pytest.raises(InvalidJoinToken) as caught:
        consume(db, tokens, token, OTHER, now)
    return caught.value.reason


def test_a_token_is_returned_once_and_only_its_hash_is_stored(
    database: Database, tokens: JoinTokens
) -> None:
    token, record = tokens.create(
        site="branch-7", labels={"tier": "gold"}, ttl=timedelta(hours=1), created_by="alice"
    )
    assert token.startswith("opj_")
    assert len(token) == 36
    assert record.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert record.expires_at == T0 + timedelta(hours=1)
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT * FROM join_tokens").all()
    assert len(rows) == 1
    assert all(token not in str(value) for value in rows[0])
    other, _ = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
    assert other != token


def test_a_token_can_be_used_once(database: Database, tokens: JoinTokens) -> None:
    token, record = tokens.create(
        site="branch-7", labels={"tier": "gold"}, ttl=timedelta(hours=1), created_by="alice"
    )
    grant = consume(database, tokens, token, AGENT, T0 + timedelta(minutes=5))
    assert grant == TokenGrant(token_id=record.id or 0, site="branch-7", labels={"tier": "gold"})
    assert reason(database, tokens, token) == "used"
    [used] = tokens.list(include_used=True)
    assert used.used_at == T0 + timedelta(minutes=5)
    assert used.used_by_agent_id == AGENT
    assert tokens.list() == []


def test_a_rolled_back_enrollment_leaves_the_token_usable(
    database: Database, tokens: JoinTokens
) -> None:
    token, _ = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")

    def consume_then_fail() -> None:
        with database.session() as session:
            tokens.consume(session, token, agent_id=AGENT, now=T0)
            raise RuntimeError("the CSR was bad")

    with pytest.raises(RuntimeError):
        consume_then_fail()
    assert consume(database, tokens, token, OTHER, T0).site == ""


def test_an_expired_token_is_refused(database: Database, tokens: JoinTokens) -> None:
    token, _ = tokens.create(site="", labels={}, ttl=timedelta(minutes=1), created_by="alice")
    assert reason(database, tokens, token, T0 + timedelta(minutes=1)) == "expired"
    assert reason(database, tokens, token, T0 + timedelta(days=3)) == "expired"
    # Still usable a moment before it expires, and then used, not expired.
    consume(database, tokens, token, AGENT, T0 + timedelta(seconds=59))
    assert reason(database, tokens, token, T0 + timedelta(seconds=59)) == "used"


def test_an_unknown_token_is_refused(database: Database, tokens: JoinTokens) -> None:
    tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
    assert reason(database, tokens, "opj_" + "A" * 32) == "unknown"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "opj_",
        "opj_" + "a" * 31,
        "opj_" + "a" * 33,
        "opk_" + "a" * 32,
        "OPJ_" + "a" * 32,
        "opj_" + "a" * 31 + "!",
        "opj_" + "a" * 32 + "\n",
        "opj_" + "é" * 32,
        "opj_' OR '1'='1' --" + "a" * 14,
        "opj_" + "a" * 10_000,
    ],
    ids=lambda t: repr(t[:24]),
)
def test_a_malformed_token_is_refused_before_any_lookup(
    database: Database, tokens: JoinTokens, token: str
) -> None:
    tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
    assert reason(database, tokens, token) == "malformed"
    assert len(tokens.list()) == 1  # nothing was consumed


@pytest.mark.parametrize("agent_id", ["", "agent-1", AGENT.upper(), AGENT + "\n", "x" * 10_000])
def test_a_token_is_not_spent_on_an_invalid_agent_id(
    database: Database, tokens: JoinTokens, agent_id: str
) -> None:
    token, _ = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
    with pytest.raises(InvalidArgument):
        consume(database, tokens, token, agent_id, T0)
    assert consume(database, tokens, token, AGENT, T0).site == ""


def race(database: Database, tokens: JoinTokens, token: str, contenders: int) -> list[str]:
    """Consumes `token` from `contenders` threads released at once; returns their outcomes."""
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    lock = threading.Lock()

    def contend(n: int) -> None:
        barrier.wait()
        try:
            consume(database, tokens, token, str(uuid.UUID(int=n)), T0)
            outcome = "won"
        except InvalidJoinToken as exc:
            outcome = exc.reason
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)


def test_two_concurrent_consumers_cannot_both_win(database: Database, tokens: JoinTokens) -> None:
    token, _ = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
    assert race(database, tokens, token, 2) == ["used", "won"]
    for _ in range(3):
        token, _ = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="alice")
        assert race(database, tokens, token, 6) == ["used"] * 5 + ["won"]
    assert tokens.list() == []
    used = tokens.list(include_used=True)
    assert len(used) == 4
    assert all(t.used_by_agent_id is not None for t in used)


HOSTILE = [
    "x" * 10_000,
    "branch\n7",
    "branch 7",
    "zürich",
    "東京",
    "'; DROP TABLE join_tokens; --",
    "a\x00b",
    "x" * 64,
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:16]))
def test_hostile_sites_and_labels_are_refused(
    database: Database, tokens: JoinTokens, value: str
) -> None:
    for site, labels in [(value, {}), ("ok", {value: "v"}), ("ok", {"k": value})]:
        with pytest.raises(InvalidArgument):
            tokens.create(site=site, labels=labels, ttl=timedelta(hours=1), created_by="alice")
    assert tokens.list(include_used=True) == []
    with database.engine.connect() as connection:  # the table is still there
        assert connection.execute(sa.text("SELECT COUNT(*) FROM join_tokens")).scalar() == 0


def test_the_largest_valid_sites_and_labels_are_stored_verbatim(tokens: JoinTokens) -> None:
    site = "A-z_0.9" + "x" * 56
    labels = {f"k{i:02d}" + "-" * 59: "v." * 31 + "v" for i in range(32)}
    actor = "'; DROP TABLE join_tokens; -- Zoë 🚀"
    tokens.create(site=site, labels=labels, ttl=timedelta(days=30), created_by=actor)
    [stored] = tokens.list()
    assert (stored.site, stored.labels, stored.created_by) == (site, labels, actor)


@pytest.mark.parametrize(
    ("labels", "ttl"),
    [
        ({f"k{i}": "v" for i in range(33)}, timedelta(hours=1)),
        ({"": "v"}, timedelta(hours=1)),
        ({"k": ""}, timedelta(hours=1)),
        ({}, timedelta(seconds=59)),
        ({}, timedelta(days=30, seconds=1)),
        ({}, timedelta(hours=-1)),
    ],
)
def test_out_of_range_labels_and_lifetimes_are_refused(
    tokens: JoinTokens, labels: dict[str, str], ttl: timedelta
) -> None:
    with pytest.raises(InvalidArgument):
        tokens.create(site="", labels=labels, ttl=ttl, created_by="alice")
    assert tokens.list(include_used=True) == []


def test_revoking_deletes_an_unused_token_only(
    database: Database, tokens: JoinTokens, clock: Clock
) -> None:
    unused, unused_record = tokens.create(
        site="", labels={}, ttl=timedelta(hours=1), created_by="alice"
    )
    used, used_record = tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="bob")
    consume(database, tokens, used, AGENT, T0)
    assert unused_record.id is not None
    assert used_record.id is not None
    assert [t.id for t in tokens.list()] == [unused_record.id]

    tokens.revoke(unused_record.id, actor="carol")
    assert reason(database, tokens, unused) == "unknown"
    with pytest.raises(NotFound):
        tokens.revoke(unused_record.id, actor="carol")
    with pytest.raises(TokenAlreadyUsed):
        tokens.revoke(used_record.id, actor="carol")
    assert [t.id for t in tokens.list(include_used=True)] == [used_record.id]

    with database.session() as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("alice", "token.create", f"token:{unused_record.id}"),
        ("bob", "token.create", f"token:{used_record.id}"),
        ("carol", "token.revoke", f"token:{unused_record.id}"),
    ]
