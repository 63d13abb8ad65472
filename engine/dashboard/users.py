"""Who may log in to the dashboard: a file of users, each with a role and an argon2 password hash,
or the single operators' token of ``ENGINE_DASHBOARD_TOKEN``.

The file holds one ``name:role:hash`` line per user (no password, only its argon2id hash), so it
can be read by the dashboard's account without revealing anything that logs in elsewhere.
``python -m engine dashboard-user`` writes it; the dashboard only reads it.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass

from engine.errors import UsageError

#: A viewer reads every page; an operator may also pause, resume and rerun.
VIEWER, OPERATOR = "viewer", "operator"
ROLES = (VIEWER, OPERATOR)
#: The shortest password or token accepted: shorter ones are guessed too easily.
MIN_SECRET = 16
#: The name a login with the single token shows in the audit log.
TOKEN_USER = "token"
#: A user's name: short, and safe in a log line and a file line.
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
#: The name a user may not take (the token's).
RESERVED = (TOKEN_USER,)


class UsersError(UsageError):
    """A users file that cannot be used, or a user or password it refuses."""


def check_secret(secret: str, what: str) -> str:
    """``secret`` if it is long enough to be a password or token, else :class:`UsersError`."""
    if len(secret) < MIN_SECRET:
        raise UsersError(f"{what} is {len(secret)} characters long: at least {MIN_SECRET} are needed")
    return secret


def _hasher():
    from argon2 import PasswordHasher  # the dashboard extra: imported only where users are used

    return PasswordHasher()


@dataclass(frozen=True)
class User:
    name: str
    role: str


@dataclass(frozen=True)
class Users:
    """The users allowed to log in: ``hashes`` (name → (role, argon2 hash)) and/or the single ``token``
    (an operator)."""

    hashes: dict[str, tuple[str, str]]
    token: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.hashes or self.token)

    def verify(self, name: str, password: str) -> User | None:
        """The user ``name`` if ``password`` is theirs, or the token's operator if it is the token; else None."""
        if self.token and hmac.compare_digest(password.encode(), self.token.encode()):
            return User(TOKEN_USER, OPERATOR)
        found = self.hashes.get(name)
        if found is None:
            return None
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            _hasher().verify(found[1], password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, found[0])

    def role_of(self, name: str) -> str | None:
        """The role ``name`` holds now (None: removed since), so that a removed user's session ends."""
        if name == TOKEN_USER:
            return OPERATOR if self.token else None
        return self.hashes[name][0] if name in self.hashes else None


def read_users(path: str | None, token: str | None = None) -> Users:
    """The users of ``path`` (none if None) and the token; :class:`UsersError` names a bad line."""
    if token is not None:
        check_secret(token, "ENGINE_DASHBOARD_TOKEN")
    hashes: dict[str, tuple[str, str]] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip() and not line.startswith("#"):
                        name, role, digest = _parse(path, number, line.strip())
                        hashes[name] = (role, digest)
        except OSError as err:
            raise UsersError(f"cannot read the users file {path}: {err.strerror}") from None
    return Users(hashes, token)


def _parse(path: str, number: int, line: str) -> tuple[str, str, str]:
    parts = line.split(":", 2)
    if len(parts) != 3 or not NAME.fullmatch(parts[0]) or parts[1] not in ROLES or not parts[2].startswith("$argon2"):
        raise UsersError(f"{path}:{number}: not a 'name:role:argon2-hash' line")
    return parts[0], parts[1], parts[2]


def add_user(path: str, name: str, role: str, password: str) -> None:
    """Add ``name`` to ``path`` (or change their role and password), the file kept private (0600)."""
    if not NAME.fullmatch(name) or name in RESERVED:
        raise UsersError(f"invalid user name {name!r}: letters, digits and . _ @ - only, at most 64")
    check_secret(password, "the password")
    users = read_users(path) if os.path.exists(path) else Users({})
    _write(path, {**users.hashes, name: (role, _hasher().hash(password))})


def remove_user(path: str, name: str) -> None:
    users = read_users(path)
    if name not in users.hashes:
        raise UsersError(f"no user {name!r} in {path}")
    _write(path, {key: value for key, value in users.hashes.items() if key != name})


def _write(path: str, hashes: dict[str, tuple[str, str]]) -> None:
    temporary = f"{path}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.writelines(f"{name}:{role}:{digest}\n" for name, (role, digest) in sorted(hashes.items()))
    os.replace(temporary, path)
