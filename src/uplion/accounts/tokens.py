"""API tokens: ``upl-<id>-<secret>``, made, parsed, hashed, checked and redacted.

- ``<id>`` is 12 hex digits: the public part, the key under which the database and the cache
  find the token (a lookup by id, never by secret).
- ``<secret>`` is 43 characters drawn uniformly from the URL-safe base64 alphabet without ``-``
  (``A-Z a-z 0-9 _``, 63 symbols): 257 bits, at least the 32 random bytes it stands for. It is
  shown once, at creation; only its SHA-256 is stored, and it is compared in constant time.

Never log a token: log ``redact(token)``, which keeps the id only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from uplion.accounts.principal import Principal

PREFIX = "upl-"
ID_BYTES = 6
SECRET_LENGTH = 43
_SECRET_ALPHABET = string.ascii_letters + string.digits + "_"
_SHOWN_SECRET_CHARS = 4
# Wider than what new_token makes, so tokens made with other lengths later still parse.
_TOKEN = re.compile(r"upl-(?P<id>[0-9a-f]{8,32})-(?P<secret>[A-Za-z0-9_]{32,128})")


def new_token() -> tuple[str, str, str]:
    """A fresh token: ``(token_id, secret, full_token)``."""
    token_id = secrets.token_hex(ID_BYTES)
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return token_id, secret, f"{PREFIX}{token_id}-{secret}"


def parse(full_token: str) -> tuple[str, str] | None:
    """``(token_id, secret)`` of a well-formed token, else ``None``."""
    match = _TOKEN.fullmatch(full_token)
    return (match["id"], match["secret"]) if match else None


def hash_secret(secret: str) -> str:
    """The stored form of a secret: SHA-256, hex (see ``tables.ApiToken`` for why a fast hash)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(token_id: str, secret: str) -> str:
    """What lists show to recognise a token: its id and the first few characters of its secret."""
    return f"{PREFIX}{token_id}-{secret[:_SHOWN_SECRET_CHARS]}"


def verify(secret: str, principal: Principal) -> bool:
    """True when the secret is the token's, compared in constant time.

    Only the secret: the caller then checks the token's state (``revoked``, ``expired()``,
    ``user_active``), and tells it only to whoever holds the secret.
    """
    return hmac.compare_digest(hash_secret(secret), principal.token_hash)


def redact(token: str) -> str:
    """A token fit for logs: ``upl-<id>-…`` (or ``…`` for anything that is not one)."""
    parsed = parse(token)
    return f"{PREFIX}{parsed[0]}-…" if parsed else "…"
