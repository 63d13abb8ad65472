"""One access token per machine: fetched by whichever sending process needs it first, read by the rest.

:class:`SharedToken` is the shared memory a machine's sending processes hold it in (the local pool
creates it for its workers, a worker node for its pool processes: nodes fetch their own). An
:class:`Authorizer` is one process's view: it uses its copy until the refresh time (``expires_in``
less a margin), then refreshes it under the shared lock, so a machine asks the endpoint about once
per expiry whatever its process count. A process whose token is still valid never waits for the
lock; only one with no valid token does.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

from engine.auth.oauth import OAuthClient, Token, TokenError
from engine.delivery.shared import HeldLock

#: Most bytes of a token (JWTs with many claims run to a few kilobytes).
MAX_TOKEN_BYTES = 16384
#: Most bytes of a client's identity (token URL, client id, scope).
MAX_IDENTITY_BYTES = 2048
#: Refresh this long before the token expires (s), at most; at least :data:`REFRESH_SHARE` of its life is used.
REFRESH_MARGIN = 60.0
REFRESH_SHARE = 0.8
#: After a failed token request, wait this long (s) before another, and give up after this many in a row.
FETCH_RETRY = 0.5
MAX_FETCH_FAILURES = 5


class SharedToken:
    """The token, its identity and times, in shared memory; one lock serialises refreshes (a
    :class:`~engine.delivery.shared.HeldLock`: held for a whole fetch, released by the pool if its holder dies)."""

    def __init__(self, lock: HeldLock, token, identity, times):
        self.lock, self.token, self.identity, self.times = lock, token, identity, times

    @classmethod
    def create(cls, context) -> SharedToken:
        """Shared memory from a multiprocessing ``context``, passed to (or inherited by) each process."""
        return cls(
            HeldLock.create(context),
            context.Array("c", MAX_TOKEN_BYTES, lock=False),
            context.Array("c", MAX_IDENTITY_BYTES, lock=False),
            context.Array("d", 2, lock=False),  # fetched_at, expires_at
        )

    @classmethod
    def create_local(cls) -> SharedToken:
        """A token for one process alone (a sender built without a machine's shared one)."""
        return cls.create(multiprocessing.get_context("spawn"))

    def __getstate__(self):
        return self.lock, self.token, self.identity, self.times

    def __setstate__(self, state):
        self.lock, self.token, self.identity, self.times = state

    def read(self, identity: str) -> Token | None:
        """The token held for ``identity`` (another client's is not returned)."""
        if self.identity.value.decode() != identity or not self.token.value:
            return None
        return Token(self.token.value.decode(), self.times[0], self.times[1])

    def write(self, identity: str, token: Token) -> None:
        raw = token.value.encode()
        if len(raw) >= MAX_TOKEN_BYTES:
            raise TokenError(f"--oauth2-token-url: the access token is over {MAX_TOKEN_BYTES} bytes")
        self.token.value = raw
        self.identity.value = identity.encode()[: MAX_IDENTITY_BYTES - 1]
        self.times[0], self.times[1] = token.fetched_at, token.expires_at


def refresh_at(token: Token) -> float:
    """When a token is refreshed: a margin before it expires."""
    life = token.expires_at - token.fetched_at
    return token.expires_at - min(REFRESH_MARGIN, life * (1 - REFRESH_SHARE))


@dataclass
class _Failures:
    """The token requests that failed in a row, the last one's reason, and when to ask again."""

    count: int = 0
    next_try: float = 0.0
    reason: str = ""


class TokenUnavailable(TokenError):
    """No valid token now; the row waits for the next try (its attempt is not spent)."""


#: Seconds a replaced token stays redacted beyond the transfers' ``--timeout``: a transfer that sent it
#: may end, and its answer echo it, up to its timeout after the token was replaced.
RETIRED_MARGIN = 5.0


class Authorizer:
    """This process's access token from ``shared`` for ``client``; ``header()`` is its Authorization line.
    Tokens it replaced stay among its :meth:`secrets` for ``timeout`` (+ a margin): transfers that sent
    them may still end."""

    def __init__(self, client: OAuthClient, shared: SharedToken, timeout: float = 60.0):
        self.client, self.shared = client, shared
        self.identity = client.identity
        self.current: Token | None = None
        self.retired: dict[str, float] = {}  # replaced tokens -> until when (monotonic) they stay redacted
        self.keep_retired = timeout + RETIRED_MARGIN
        self.failures = _Failures()

    def header(self) -> str:
        return f"Authorization: Bearer {self.token()}"

    def secrets(self) -> tuple[str, ...]:
        """The tokens this process has sent: redacted wherever text is shown."""
        retired = self.retired
        if retired:
            now = time.monotonic()
            for value in [value for value, until in retired.items() if until < now]:
                del retired[value]
        current = (self.current.value,) if self.current else ()
        return current + tuple(retired)

    def token(self) -> str:
        """A valid token: this process's copy until its refresh time, then the machine's, or a new one.
        A process whose copy still works does not wait while another one refreshes."""
        current = self.current
        if current is not None and time.time() < refresh_at(current):
            return current.value
        still_valid = current is not None and time.time() < current.expires_at
        if not self.shared.lock.acquire(block=not still_valid):
            return current.value  # type: ignore[union-attr]
        try:
            self._refresh()
        except TokenError:
            if not still_valid:
                raise  # the row waits (TokenUnavailable) or fails with the endpoint's reason
        finally:
            self.shared.lock.release()
        assert self.current is not None
        return self.current.value

    def unauthorized(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` (Unix time) got 401: refresh the token unless it was replaced
        since (one refresh for all the transfers the old token was in)."""
        with self.shared.lock:
            held = self.shared.read(self.identity)
            if held is not None and held.fetched_at > sent_at:
                self._adopt(held)
                return
            self._fetch()

    def _refresh(self) -> None:
        """Under the lock: take the machine's token if another process refreshed it, else fetch one."""
        held = self.shared.read(self.identity)
        if held is not None and time.time() < refresh_at(held):
            self._adopt(held)
        else:
            self._fetch()

    def _fetch(self) -> None:
        """Ask the endpoint, at most once per back-off after a failure. The rows wait through the first
        failures (:class:`TokenUnavailable`); after :data:`MAX_FETCH_FAILURES` in a row they fail with the
        endpoint's reason (the pass ends, ``rerun`` sends them) while the endpoint is still asked now and then."""
        failures, now = self.failures, time.time()
        if now < failures.next_try:
            if failures.count >= MAX_FETCH_FAILURES:
                raise TokenError(failures.reason)
            raise TokenUnavailable(f"{failures.reason}; trying again")
        try:
            token = self.client.fetch()
        except TokenError as err:
            failures.count += 1
            failures.reason = str(err)
            failures.next_try = now + FETCH_RETRY * min(failures.count, MAX_FETCH_FAILURES)
            if failures.count >= MAX_FETCH_FAILURES:
                raise
            raise TokenUnavailable(f"{err}; trying again") from None
        self.failures = _Failures()
        self.shared.write(self.identity, token)
        self._adopt(token)

    def _adopt(self, token: Token | None) -> None:
        if token is not None and (self.current is None or token.value != self.current.value):
            if self.current is not None:
                self.retired[self.current.value] = time.monotonic() + self.keep_retired
            self.current = token
