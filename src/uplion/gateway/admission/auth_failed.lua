-- Count a failed authentication of a client address. Needs window.lua.
-- KEYS[1]: the address's window. ARGV: now ms ('' = the server's clock), BUCKET_MS, SPAN,
-- KEY_SLACK_MS. Returns {now, the live buckets before this failure}.

local now = clock(ARGV[1])
local bucket_ms, span, slack_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local bucket = math.floor(now / bucket_ms)
local _requests, _tokens, live = tally(KEYS[1], bucket - span + 1)
redis.call('HINCRBY', KEYS[1], 'r:' .. bucket, 1)
redis.call('PEXPIRE', KEYS[1], (bucket + span) * bucket_ms - now + slack_ms)
return {now, live}
