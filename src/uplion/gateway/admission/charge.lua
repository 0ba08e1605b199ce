-- charge(windows, counters, field, delta): add delta tokens where a reservation was charged: the
-- token field of its bucket in each window (if the window still holds it) and each quota
-- counter of its periods (if that counter still exists). Nothing goes below zero.

local function charge(windows, counters, field, delta)
  if delta == 0 then return end
  for _, key in ipairs(windows) do
    if redis.call('HEXISTS', key, field) == 1 then
      if redis.call('HINCRBY', key, field, delta) < 0 then
        redis.call('HSET', key, field, 0)
      end
    end
  end
  for _, key in ipairs(counters) do
    if redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, delta) < 0 then
        redis.call('SET', key, 0, 'KEEPTTL')
      end
    end
  end
end
