-- One admission, atomically: tally every window, read every quota, admit when all pass (the
-- predicate of rules.admits), and only then reserve; a held reservation is recorded under its
-- request id, and an admission sent again for a reservation still held reserves nothing more.
-- Needs window.lua and calendar.lua.
-- KEYS: each window's HASH, then each quota's counter prefix (the period's label follows), then,
--   when held, the request's record and the index of held records.
-- ARGV: now ms ('' = the server's clock), BUCKET_MS, SPAN, KEY_SLACK_MS, QUOTA_GRACE_S,
--   estimate, number of windows, hold ms (-1: not held), request id, per window its RPM and
--   TPM (-1: unlimited), per quota its budget and period. A held record that nothing settles
--   or returns (no gateway runs) disappears QUOTA_GRACE_S after its hold, as the counters do.
-- Returns {now (the first admission's, when sent again), admitted (0/1), per window its live
--   buckets before this request (a list), per quota its tokens used before this request}.

local now = clock(ARGV[1])
local bucket_ms, span, slack_ms, grace_s = tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local estimate, windows, hold_ms = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local id = ARGV[9]
local first = 9  -- the ARGV before the per-window pairs
local quotas = (#ARGV - first - 2 * windows) / 2
local record, index = KEYS[windows + quotas + 1], KEYS[windows + quotas + 2]
local again = hold_ms >= 0 and redis.call('HGET', record, 'state') == 'held'
local bucket = math.floor(now / bucket_ms)
local seconds = math.floor(now / 1000)
local admitted = 1
local reply = {now, 0}
for i = 1, windows do
  local rpm, tpm = tonumber(ARGV[first + 2 * i - 1]), tonumber(ARGV[first + 2 * i])
  local requests, tokens, live = tally(KEYS[i], bucket - span + 1)
  if (rpm >= 0 and requests >= rpm) or (tpm >= 0 and tokens + estimate > tpm) then
    admitted = 0
  end
  reply[#reply + 1] = live
end
local counters = {}
for j = 1, quotas do
  local at = first + 2 * windows + 2 * j - 1
  local budget = tonumber(ARGV[at])
  local label, finish = period(seconds, ARGV[at + 1])
  local key = KEYS[windows + j] .. label
  local used = tonumber(redis.call('GET', key) or 0)
  if used + estimate > budget then admitted = 0 end
  counters[j] = {key, finish}
  reply[#reply + 1] = used
end
if again then
  reply[1], reply[2] = tonumber(redis.call('HGET', record, 'at')), 1
  return reply
end
if admitted == 1 then
  local charged_windows, charged_counters = {}, {}
  for i = 1, windows do
    if tonumber(ARGV[first + 2 * i - 1]) >= 0 then
      redis.call('HINCRBY', KEYS[i], 'r:' .. bucket, 1)
    end
    if tonumber(ARGV[first + 2 * i]) >= 0 then
      redis.call('HINCRBY', KEYS[i], 't:' .. bucket, estimate)
      charged_windows[#charged_windows + 1] = KEYS[i]
    end
    redis.call('PEXPIRE', KEYS[i], (bucket + span) * bucket_ms - now + slack_ms)
  end
  for j = 1, #counters do
    redis.call('INCRBY', counters[j][1], estimate)
    redis.call('EXPIRE', counters[j][1], counters[j][2] + grace_s - seconds)
    charged_counters[j] = counters[j][1]
  end
  if hold_ms >= 0 then
    redis.call('DEL', record)
    redis.call('HSET', record, 'state', 'held', 'at', now, 'tokens', estimate,
               'field', 't:' .. bucket, 'windows', cjson.encode(charged_windows),
               'counters', cjson.encode(charged_counters))
    redis.call('PEXPIRE', record, hold_ms + grace_s * 1000)
    redis.call('ZADD', index, now + hold_ms, id)
  end
end
reply[2] = admitted
return reply
