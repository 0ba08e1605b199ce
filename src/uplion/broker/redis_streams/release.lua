-- KEYS[1]: the stream; ARGV: group, consumer, entry id, encoded task, MINID, deliveries so far.
-- If the entry is still pending for this consumer, acks it and appends the task again (to the
-- back of the queue); returns 1 if it did, 0 if the task was not this consumer's any more.
-- (After append.lua and owned.lua.)
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
append(KEYS[1], ARGV[5], ARGV[4], ARGV[6])
return 1
