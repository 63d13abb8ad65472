"""What a sending process is given: plain, frozen values built once from a run's settings.

:meth:`engine.config.RunSettings.sender_parts` builds a :class:`SenderParts`; a local worker
receives it across the process boundary, a worker node builds it from the run's stored
settings. :mod:`engine.delivery` reads these values and never the run's settings, so the
arrows run one way: ``cli``/``run`` → ``config`` → these parts → ``delivery``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.delivery.breaker import BreakerSettings
from engine.delivery.policy import RetryPolicy
from engine.request.spec import RequestSpec

#: Open files a worker needs besides its sockets (libraries, pipes, the epoll descriptor…).
FILES_BESIDES_SOCKETS = 64


@dataclass(frozen=True, kw_only=True)
class TransportOptions:
    """Per-attempt limits and TLS settings shared by every handle of a transport."""

    connect_timeout: float
    timeout: float
    verify_tls: bool = True
    ca_bundle: str | None = None
    user_agent: str = "batch-engine"
    #: libcurl silently sends a request again when the reused connection it went out on turns
    #: out dead with no answer. With an Idempotency-Key that is harmless; without one it could
    #: charge twice, so such runs hand libcurl each body through a read callback it cannot
    #: rewind: the resend fails instead (curl error 65), and connections are still reused.
    resend_harmless: bool = True
    http2: bool = False
    max_host_connections: int = 0
    proxy: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: str | None = field(default=None, repr=False)
    #: Bytes of each answer kept to capture values from (0: only the excerpt; ``--capture`` sets it).
    capture_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class SenderParts:
    """Everything one sending process needs, the same for a local worker and a worker node.

    ``window`` is ``--concurrency``: the transfers in flight per sending process (a local
    worker, or one pool process of a node), on both backends.
    """

    spec: RequestSpec
    policy: RetryPolicy
    transport: TransportOptions
    window: int
    chunk_size: int
    id_field: str = "id"
    rate: float | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    #: ``--capture NAME=JSONPATH`` texts: compiled and evaluated by each sending process.
    captures: tuple[str, ...] = ()
