"""``--rate`` for all worker nodes together: one schedule in Redis, advanced atomically by a Lua script.

The same rule as the local pacer (GCRA: each request takes the next slot of a shared
"theoretical arrival time"), kept in the broker's Redis under the run's key and read with
Redis's own clock, so nodes on machines whose clocks differ still share one schedule.
"""

from __future__ import annotations

from engine.cluster.link import RedisLink
from engine.delivery.ratelimit import BURST_SECONDS

#: KEYS[1]: the run's schedule; ARGV[1]: seconds between requests; ARGV[2]: burst allowance (s).
#: Returns 0 when a request may start now (and takes its slot), else microseconds to wait.
_TAKE_SLOT = """
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > math.max(burst, interval) then
    return math.ceil((tat - now - burst) * 1000000)
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'EX', 3600)
return 0
"""


#: The wait (µs) while Redis cannot hand out a slot.
UNSURE = 500_000


class NodePacer:
    """What a node's :class:`~engine.delivery.gate.Gate` asks of a pacer: a fixed window per chunk
    sender, and ``rate`` requests per second (None: no limit) across every node sending ``run_id``."""

    def __init__(self, link: RedisLink, run_id: str, rate: float | None, window: int):
        self.key = f"batch-engine:rate:{run_id}"
        self.interval = 1.0 / rate if rate else 0.0
        self._window = window
        self.link = link
        self.take_slot = link.client.register_script(_TAKE_SLOT)

    def acquire(self) -> float:
        """0 if a request may start now (its slot is taken), else the seconds to wait (while Redis is
        unreachable: a little, then ask again)."""
        if not self.interval:
            return 0.0
        wait_us = self.link.call(lambda: self.take_slot(keys=[self.key], args=[self.interval, BURST_SECONDS]), UNSURE)
        return int(wait_us) / 1_000_000

    def window(self) -> int:
        return self._window

    def report(self, answers: int, throttled: int) -> None:
        """The window of a node's sender does not adapt to 429s (the retries wait their Retry-After)."""

    def rest_on_429(self) -> bool:
        return True
