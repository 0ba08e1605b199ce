-- Replace a reservation with its usage where it was charged (charge.lua). A held reservation's
-- record says how: still held, the difference; returned at the end of its hold (or its record
-- lost), the usage alone; settled already, nothing.
-- KEYS: the windows' HASHes, then the quotas' counters, then, when held, its record and the
--   index of held records.
-- ARGV: the bucket's token field ('t:<bucket>'), usage, reserved, number of windows,
--   held ('1' or '0'), SETTLED_KEEP_MS, request id.

local field, used, reserved = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local windows, held = tonumber(ARGV[4]), ARGV[5] == '1'
local last = #KEYS
local delta = used - reserved
if held then
  local record, index = KEYS[last - 1], KEYS[last]
  last = last - 2
  local state = redis.call('HGET', record, 'state')
  if state == 'settled' then return 0 end
  if state ~= 'held' then delta = used end
  redis.call('DEL', record)  -- what is left: its end, for a settlement sent again
  redis.call('HSET', record, 'state', 'settled')
  redis.call('PEXPIRE', record, tonumber(ARGV[6]))
  redis.call('ZREM', index, ARGV[7])
end
local window_keys, counter_keys = {}, {}
for i = 1, windows do window_keys[#window_keys + 1] = KEYS[i] end
for i = windows + 1, last do counter_keys[#counter_keys + 1] = KEYS[i] end
charge(window_keys, counter_keys, field, delta)
return 0
