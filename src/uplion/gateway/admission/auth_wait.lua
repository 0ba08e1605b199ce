-- How long a client address still waits before it may authenticate (ms; 0: it may now).
-- Needs window.lua. KEYS[1]: the address's block (the end of its wait, ms). ARGV[1]: now ms
-- ('' = the server's clock).

local until_ms = redis.call('GET', KEYS[1])
if not until_ms then return 0 end
return math.max(0, tonumber(until_ms) - clock(ARGV[1]))
