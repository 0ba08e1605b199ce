-- Return the held reservations whose hold is over, at most a batch: each one's estimate comes
-- off where it was charged (charge.lua, with the keys its record names) and its record says
-- 'expired', so that a settlement arriving later charges the usage alone. Needs window.lua
-- (clock) and charge.lua.
-- KEYS: the index of held records (request id -> end of its hold, ms).
-- ARGV: now ms ('' = the server's clock), batch size, SETTLED_KEEP_MS, the records' key prefix.
-- Returns {reservations returned, ids looked at} (a full batch: call again).

local now = clock(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local returned = 0
for _, id in ipairs(due) do
  local record = ARGV[4] .. id
  local held = redis.call('HMGET', record, 'state', 'tokens', 'field', 'windows', 'counters')
  if held[1] == 'held' then
    charge(cjson.decode(held[4]), cjson.decode(held[5]), held[3], -tonumber(held[2]))
    redis.call('DEL', record)  -- what is left: its end, for a settlement arriving late
    redis.call('HSET', record, 'state', 'expired')
    redis.call('PEXPIRE', record, tonumber(ARGV[3]))
    returned = returned + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return {returned, #due}
