"""Token format: made, parsed, hashed, compared, redacted."""

from __future__ import annotations

import hashlib

import pytest

from uplion.accounts import tokens
from uplion.accounts.principal import Principal


def principal_with(secret: str) -> Principal:
    return Principal(token_id="0123456789ab", token_hash=tokens.hash_secret(secret),
                     user_id="u_1", user_name="alice", role="member")


def test_a_new_token_parses_back_to_its_id_and_secret() -> None:
    token_id, secret, full = tokens.new_token()
    assert full == f"upl-{token_id}-{secret}"
    assert len(token_id) == 12
    assert int(token_id, 16) >= 0
    assert len(secret) == tokens.SECRET_LENGTH
    assert "-" not in secret
    assert tokens.parse(full) == (token_id, secret)


def test_tokens_are_unique() -> None:
    made = {tokens.new_token()[2] for _ in range(1000)}
    assert len(made) == 1000


@pytest.mark.parametrize("presented", [
    "", "upl-", "upl--", "sk-0123456789ab-" + "a" * 43, "upl-0123456789ab",
    "upl-0123456789AB-" + "a" * 43, "upl-0123456789ab-" + "a" * 10,
    "upl-0123456789ab-" + "a" * 42 + "-", " upl-0123456789ab-" + "a" * 43,
])
def test_malformed_tokens_do_not_parse(presented: str) -> None:
    assert tokens.parse(presented) is None


def test_the_secret_is_stored_as_its_sha256() -> None:
    assert tokens.hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()


def test_verify_accepts_the_secret_and_nothing_else() -> None:
    _, secret, _ = tokens.new_token()
    principal = principal_with(secret)
    assert tokens.verify(secret, principal)
    assert not tokens.verify(secret[:-1], principal)
    assert not tokens.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"), principal)
    assert not tokens.verify("", principal)


def test_redact_keeps_the_id_and_drops_the_secret() -> None:
    token_id, secret, full = tokens.new_token()
    assert tokens.redact(full) == f"upl-{token_id}-…"
    assert secret not in tokens.redact(full)
    assert tokens.redact("something-secret") == "…"


def test_the_display_prefix_shows_four_secret_characters() -> None:
    token_id, secret, full = tokens.new_token()
    prefix = tokens.display_prefix(token_id, secret)
    assert full.startswith(prefix)
    assert len(prefix) == len(f"upl-{token_id}-") + 4
