"""Users, tokens and principals in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import pytest_asyncio

from uplion.accounts import db, tokens
from uplion.accounts.principal import Quota, RateLimits
from uplion.accounts.repository import (
    Conflict,
    Invalid,
    NotFound,
    Repository,
    TokenChanges,
    UserChanges,
)


@pytest_asyncio.fixture(loop_scope="function")
async def repo(database: db.Database) -> AsyncIterator[Repository]:
    """A repository in one transaction, committed at the end of the test."""
    async with database.session() as session:
        yield Repository(session)


async def test_a_created_token_resolves_to_its_principal(repo: Repository) -> None:
    alice = await repo.create_user("alice")
    created = await repo.create_token(alice.id, "laptop")
    assert created.token is not None
    parsed = tokens.parse(created.token)
    assert parsed is not None
    token_id, secret = parsed
    assert token_id == created.id
    assert created.token.startswith(created.prefix)
    principal = await repo.principal_for(token_id)
    assert principal is not None
    assert (principal.user_id, principal.user_name, principal.role) == (alice.id, "alice", "member")
    assert not principal.revoked
    assert principal.user_active
    assert principal.expires_at is None
    assert tokens.verify(secret, principal)
    assert not tokens.verify(tokens.new_token()[1], principal)
    assert await repo.principal_for("000000000000") is None


async def test_the_secret_is_shown_once_and_stored_only_as_a_hash(repo: Repository) -> None:
    alice = await repo.create_user("alice")
    created = await repo.create_token(alice.id, "laptop")
    assert created.token is not None
    _, secret = tokens.parse(created.token) or ("", "")
    listed = await repo.list_tokens(alice.id)
    assert [token.id for token in listed] == [created.id]
    assert listed[0].token is None
    assert await repo.get_token(created.id) == listed[0]
    shown = msgspec.json.encode(listed).decode()
    assert secret not in shown
    assert "token\"" not in shown
    principal = await repo.principal_for(created.id)
    assert principal is not None
    assert principal.token_hash == tokens.hash_secret(secret)


async def test_revoked_tokens_stay_revoked(repo: Repository) -> None:
    alice = await repo.create_user("alice")
    created = await repo.create_token(alice.id, "laptop")
    revoked = await repo.revoke_token(created.id)
    assert revoked.revoked_at is not None
    assert (await repo.revoke_token(created.id)).revoked_at == revoked.revoked_at
    principal = await repo.principal_for(created.id)
    assert principal is not None
    assert principal.revoked
    with pytest.raises(Conflict, match="revoked"):
        await repo.update_token(created.id, TokenChanges(name="renamed"))


async def test_expiry_reaches_the_principal(repo: Repository) -> None:
    alice = await repo.create_user("alice")
    past = await repo.create_token(alice.id, "old", expires_at=datetime.now(UTC) - timedelta(1))
    future = datetime.now(UTC) + timedelta(days=1)
    fresh = await repo.create_token(alice.id, "new", expires_at=future)
    expired, valid = await repo.principal_for(past.id), await repo.principal_for(fresh.id)
    assert expired is not None
    assert expired.expired()
    assert valid is not None
    assert not valid.expired()
    assert valid.expires_at == pytest.approx(future.timestamp(), abs=1e-3)
    assert (await repo.get_token(fresh.id)).expires_at == future
    extended = await repo.update_token(past.id, TokenChanges(expires_at=None))
    assert extended.expires_at is None
    principal = await repo.principal_for(past.id)
    assert principal is not None
    assert not principal.expired()


@pytest.mark.parametrize(("user_models", "token_models", "allowed"), [
    (None, None, None),
    (["a", "b"], None, ["a", "b"]),
    (None, ["b", "c"], ["b", "c"]),
    (["a", "b", "c"], ["c", "d", "b"], ["c", "b"]),
    (["a"], ["b"], []),
])
async def test_the_allow_list_is_the_intersection_of_user_and_token(
    repo: Repository,
    user_models: list[str] | None,
    token_models: list[str] | None,
    allowed: list[str] | None,
) -> None:
    user = await repo.create_user("alice", allowed_models=user_models)
    created = await repo.create_token(user.id, "t", allowed_models=token_models)
    principal = await repo.principal_for(created.id)
    assert principal is not None
    assert principal.allowed_models == allowed
    assert principal.may_use("b") == (allowed is None or "b" in allowed)


async def test_limits_and_quotas_of_user_and_token_reach_the_principal(repo: Repository) -> None:
    user = await repo.create_user(
        "alice", limits=RateLimits(requests_per_minute=60), quota=Quota(1_000_000, "month")
    )
    created = await repo.create_token(
        user.id, "t", limits=RateLimits(tokens_per_minute=5000), quota=Quota(10_000, "day")
    )
    principal = await repo.principal_for(created.id)
    assert principal is not None
    assert principal.user_limits == RateLimits(requests_per_minute=60)
    assert principal.token_limits == RateLimits(tokens_per_minute=5000)
    assert principal.user_quota == Quota(1_000_000, "month")
    assert principal.token_quota == Quota(10_000, "day")


async def test_changes_keep_unset_fields_and_clear_none_ones(repo: Repository) -> None:
    user = await repo.create_user("alice", allowed_models=["a"], quota=Quota(100, "hour"))
    changed = await repo.update_user(user.id, UserChanges(limits=RateLimits(5, 50)))
    assert changed.allowed_models == ["a"]
    assert changed.quota == Quota(100, "hour")
    assert changed.limits == RateLimits(5, 50)
    cleared = await repo.update_user(user.id, UserChanges(allowed_models=None, quota=None))
    assert cleared.allowed_models is None
    assert cleared.quota is None
    assert cleared.limits == RateLimits(5, 50)
    disabled = await repo.update_user(user.id, UserChanges(active=False, role="admin"))
    assert (disabled.active, disabled.role) == (False, "admin")
    created = await repo.create_token(user.id, "t")
    principal = await repo.principal_for(created.id)
    assert principal is not None
    assert not principal.user_active
    assert principal.role == "admin"
    assert await repo.get_user(user.id) == disabled


async def test_changes_decode_from_json_with_unset_and_null() -> None:
    changes = msgspec.json.decode(b'{"quota": null, "limits": {"requests_per_minute": 3}}',
                                  type=UserChanges)
    assert changes == UserChanges(quota=None, limits=RateLimits(requests_per_minute=3))
    assert changes.allowed_models is msgspec.UNSET
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"secret_hash": "x"}', type=TokenChanges)


async def test_user_principals_cover_every_token(repo: Repository) -> None:
    alice, bob = await repo.create_user("alice"), await repo.create_user("bob")
    first = await repo.create_token(alice.id, "one")
    second = await repo.create_token(alice.id, "two")
    await repo.revoke_token(second.id)
    others = await repo.create_token(bob.id, "three")
    of_alice = await repo.principals_of_user(alice.id)
    assert sorted(p.token_id for p in of_alice) == sorted([first.id, second.id])
    everyone = await repo.all_principals()
    assert sorted(p.token_id for p in everyone) == sorted([first.id, second.id, others.id])
    assert [token.name for token in await repo.list_tokens()] == ["one", "two", "three"]
    assert [user.name for user in await repo.list_users()] == ["alice", "bob"]
    assert await repo.count_users() == 2


async def test_duplicate_user_names_conflict(repo: Repository) -> None:
    await repo.create_user("alice")
    with pytest.raises(Conflict, match="'alice' exists already"):
        await repo.create_user("alice", "admin")


async def test_the_last_active_admin_stays(repo: Repository) -> None:
    root = await repo.create_user("root", "admin")
    with pytest.raises(Conflict, match="last active admin"):
        await repo.update_user(root.id, UserChanges(role="member"))
    with pytest.raises(Conflict, match="last active admin"):
        await repo.update_user(root.id, UserChanges(active=False))
    second = await repo.create_user("second", "admin")
    assert (await repo.update_user(root.id, UserChanges(active=False))).active is False
    with pytest.raises(Conflict, match="last active admin"):
        await repo.update_user(second.id, UserChanges(role="member"))


async def test_unknown_users_and_tokens_are_not_found(repo: Repository) -> None:
    with pytest.raises(NotFound, match="no user 'u_missing'"):
        await repo.get_user("u_missing")
    with pytest.raises(NotFound, match="no user"):
        await repo.create_token("u_missing", "t")
    with pytest.raises(NotFound, match="no user"):
        await repo.update_user("u_missing", UserChanges(active=False))
    with pytest.raises(NotFound, match="no user"):
        await repo.list_tokens("u_missing")
    with pytest.raises(NotFound, match="no user"):
        await repo.principals_of_user("u_missing")
    with pytest.raises(NotFound, match="no token '0123456789ab'"):
        await repo.revoke_token("0123456789ab")
    with pytest.raises(NotFound, match="no token"):
        await repo.update_token("0123456789ab", TokenChanges(name="x"))
    with pytest.raises(NotFound, match="no token"):
        await repo.get_token("0123456789ab")


async def test_invalid_input_is_refused_with_a_reason(repo: Repository) -> None:
    with pytest.raises(Invalid, match="invalid user name"):
        await repo.create_user(" spaced ")
    with pytest.raises(Invalid, match="invalid role"):
        await repo.create_user("alice", "root")  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="requests_per_minute must be 0 or more"):
        await repo.create_user("alice", limits=RateLimits(requests_per_minute=-1))
    with pytest.raises(Invalid, match="quota period"):
        await repo.create_user("alice", quota=Quota(5, "week"))  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="allowed_models"):
        await repo.create_user("alice", allowed_models="gpt")
    alice = await repo.create_user("alice")
    with pytest.raises(Invalid, match="time zone"):
        await repo.create_token(alice.id, "t", expires_at=datetime(2030, 1, 1))
    with pytest.raises(Invalid, match="token name"):
        await repo.create_token(alice.id, "   ")
