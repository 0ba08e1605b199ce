-- Open one more stream of a token unless it holds its cap. Needs window.lua (clock).
-- KEYS[1]: the token's open streams, a sorted set of stream id -> the end of its lease (ms).
-- ARGV: now ms ('' = the server's clock), stream id, cap, lease ms. Returns 1 (opened) or 0.
local now = clock(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now)
return 1
