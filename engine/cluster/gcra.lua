-- GCRA: take the next slot of the pacer's schedule, atomically, on Redis's clock.
-- The Lua twin of engine.delivery.ratelimit.PacerSettings.take_slot (one contract, tests/test_breaker.py).
-- KEYS[1]: the pacer's hash (fields of PaceState; 'tat' and 'rate_share' are read here).
-- ARGV[1]: --rate (requests per second); ARGV[2]: burst allowance (s); ARGV[3]: the hash's time to live (s).
-- Returns 0 when a request may start now (and takes its slot), else the microseconds to wait.
local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) + tonumber(now_us) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
local share = tonumber(redis.call('HGET', KEYS[1], 'rate_share') or '1')
local interval = 1 / (rate * share)
if tat < now then tat = now end
if tat - now > math.max(burst, interval) then
    return math.ceil((tat - now - burst) * 1000000)
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', tat + interval))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0
