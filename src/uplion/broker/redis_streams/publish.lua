-- KEYS[1]: the topic's stream, KEYS[2]: the epoch key; ARGV: MINID, encoded task, a proposed
-- epoch. (After append.lua.) Answers the epoch the task was appended in (see redisio.epoch).
local epoch = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'GET')
if not epoch then epoch = ARGV[3] end
append(KEYS[1], ARGV[1], ARGV[2], '0')
return epoch
