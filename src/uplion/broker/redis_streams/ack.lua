-- KEYS[1]: the stream; ARGV: group, consumer, entry id. Acks the entry only if it is pending for
-- this consumer: 1 if it did, 0 if another consumer took it over since (or it is gone).
-- (After owned.lua.)
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
