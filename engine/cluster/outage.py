"""The outage pause for all worker nodes together: the circuit breaker's state in Redis.

The same rules as the local breaker (:mod:`engine.delivery.breaker`): only a row's first
"down" answer counts, a streak of ``threshold`` such answers after the endpoint was seen up
opens it, one probe at growing intervals, and only the probe's answer closes it. Each step
is one Lua script, so the nodes' answers update the state atomically, on Redis's clock.
"""

from __future__ import annotations

import time

from engine.cluster.link import RedisLink
from engine.delivery.breaker import BreakerSettings

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
#: KEYS[1]: the run's breaker; ARGV[1]: probe timeout. 1: send, 2: send this one as the probe, 0: wait.
_ALLOW = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'held') == '1' then return 0 end
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
if state == 0 then return 1 end
local probe_at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
local started = tonumber(redis.call('HGET', KEYS[1], 'probe_started') or '0')
if (state == 1 and now >= probe_at) or (state == 2 and now - started > tonumber(ARGV[1])) then
    redis.call('HSET', KEYS[1], 'state', 2, 'probe_started', now)
    return 2
end
return 0
"""
)
#: ARGV: down, probe, counted (0/1), threshold, first interval, max interval. Returns the state after.
_RECORD = (
    _NOW
    + """
local down, probe, counted = ARGV[1] == '1', ARGV[2] == '1', ARGV[3] == '1'
local threshold, first, max_interval = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
local streak = tonumber(redis.call('HGET', KEYS[1], 'streak') or '0')
local interval = tonumber(redis.call('HGET', KEYS[1], 'interval') or tostring(first))
redis.call('EXPIRE', KEYS[1], 86400)
if not down then redis.call('HSET', KEYS[1], 'last_up', now) end
if probe then
    if down then
        interval = math.min(max_interval, interval * 2)
        redis.call('HSET', KEYS[1], 'state', 1, 'interval', interval, 'probe_at', now + interval)
        return 1
    end
    redis.call('HSET', KEYS[1], 'state', 0, 'streak', 0, 'interval', first)
    return 0
end
if not down then
    if state == 0 and streak > 0 then redis.call('HSET', KEYS[1], 'streak', 0) end
    return state
end
if not counted or state ~= 0 then return state end
streak = streak + 1
redis.call('HSET', KEYS[1], 'streak', streak)
local last_up = tonumber(redis.call('HGET', KEYS[1], 'last_up') or '0')
if threshold > 0 and streak >= threshold and last_up > 0 then
    redis.call('HSET', KEYS[1], 'state', 1, 'opened_at', tonumber(t[1]), 'probe_at', now + interval)
    return 1
end
return 0
"""
)
#: How long a node trusts that the breaker is closed before asking Redis again (s).
CLOSED_CACHE = 0.1


class SharedBreaker:
    """The run's breaker in Redis, with the interface of :class:`~engine.delivery.breaker.CircuitBreaker`."""

    def __init__(self, link: RedisLink, run_id: str, pass_no: int, settings: BreakerSettings):
        self.link = link
        self.key = f"batch-engine:breaker:{run_id}:{pass_no}"  # each pass starts closed, as locally
        self.settings = settings
        self._allow = link.client.register_script(_ALLOW)
        self._record = link.client.register_script(_RECORD)
        self.closed_until = 0.0  # monotonic: the breaker was closed when last asked, trusted until then
        self.reset_due = 0.0

    def allow(self) -> bool | str:
        """True to send, ``"probe"`` to send this one transfer as the probe, False to wait (also while
        Redis is unreachable)."""
        now = time.monotonic()
        if now < self.closed_until:
            return True
        answer = int(self.link.call(lambda: self._allow(keys=[self.key], args=[self.settings.probe_timeout]), 0))
        if answer == 1:
            self.closed_until = now + CLOSED_CACHE
        if answer == 2:
            return "probe"
        return answer == 1

    def record(self, down: bool, probe: bool = False, counted: bool = True) -> None:
        """Count one answer; a success only every :data:`CLOSED_CACHE` seconds (it just breaks a streak).
        An answer that cannot reach Redis is not counted."""
        now = time.monotonic()
        if not down and not probe:
            if now < self.reset_due:
                return
            self.reset_due = now + CLOSED_CACHE
        elif not (probe or counted):
            return
        settings = self.settings
        args = [int(down), int(probe), int(counted), settings.threshold, settings.first_interval, settings.max_interval]
        state = int(self.link.call(lambda: self._record(keys=[self.key], args=args), 1))
        if state:
            self.closed_until = 0.0

    def hold(self, held: bool) -> None:
        """An operator's pause: every node waits (answer 0) until it is lifted."""
        self.link.call(lambda: self.link.client.hset(self.key, "held", int(held)), None)

    def held(self) -> bool:
        return self.link.call(lambda: self.link.client.hget(self.key, "held"), None) in (b"1", "1")

    def is_open(self) -> bool:
        return int(self.link.call(lambda: self.link.client.hget(self.key, "state"), None) or 0) != 0

    def outage_since(self) -> float | None:
        """When the breaker opened (wall time), or None while it is closed (or Redis cannot say)."""
        unknown: list[bytes | str | None] = [None, None]
        state, opened_at = self.link.call(lambda: self.link.client.hmget(self.key, "state", "opened_at"), unknown)
        return float(opened_at or 0) if int(state or 0) else None


class PassSignals:
    """What a coordinator tells every node about one pass, in Redis: stop starting requests.

    Set on Ctrl-C or when the outage pause has lasted ``--max-pause``: nodes finish what is in
    flight, record it, and mark their chunks done; rows never started wait for a rerun. A node
    that cannot reach Redis for as long as its link's bound stops the same way.
    """

    #: How long a node trusts its last look at the flag (s).
    LOOK_EVERY = 0.5

    def __init__(self, link: RedisLink, run_id: str, pass_no: int):
        self.link = link
        self.key = f"batch-engine:stop:{run_id}:{pass_no}"
        self.looked_at = float("-inf")
        self.stopping = False

    def request_stop(self) -> bool:
        """Tell every node; False if Redis could not be reached (ask again)."""
        return self.link.call(lambda: bool(self.link.client.set(self.key, 1, ex=86400)), False)

    def stop_requested(self) -> bool:
        now = time.monotonic()
        if not self.stopping and now - self.looked_at >= self.LOOK_EVERY:
            self.looked_at = now
            self.stopping = bool(self.link.call(lambda: self.link.client.exists(self.key), 0)) or self.link.gave_up()
        return self.stopping
