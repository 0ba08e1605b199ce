-- KEYS[1]: the stream; ARGV: group, consumer, entry ids. For each id, in order:
--  1: still pending for this consumer: its idle time is reset (XCLAIM JUSTID to itself, which
--     leaves the delivery count alone);
-- -1: another consumer took it over (it is pending for another, or it was answered: acked but
--     still in the stream);
--  0: gone from the stream (trimmed past the task TTL, or Redis lost its data).
local status = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if ok and #pending > 0 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    status[#status + 1] = 1
  elseif (ok and #pending > 0) or #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    status[#status + 1] = -1
  else
    status[#status + 1] = 0
  end
end
return status
