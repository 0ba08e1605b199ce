-- Replace a reservation with its usage where it was charged: the token field of its bucket in
-- each window (if the window still holds it) and the counter of its period for each quota (if
-- that counter still exists). Nothing goes below zero.
-- KEYS: the windows' HASHes, then the quotas' counters. ARGV: the bucket's token field
-- ('t:<bucket>'), usage - reserved, number of windows.

local field, delta, windows = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, windows do
  if redis.call('HEXISTS', KEYS[i], field) == 1 then
    if redis.call('HINCRBY', KEYS[i], field, delta) < 0 then
      redis.call('HSET', KEYS[i], field, 0)
    end
  end
end
for i = windows + 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], delta) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
