-- One admission, atomically: tally every window, read every quota, admit when all pass (the
-- predicate of rules.admits), and only then reserve. Needs window.lua and calendar.lua.
-- KEYS: each window's HASH, then each quota's counter prefix (the period's label follows).
-- ARGV: now ms ('' = the server's clock), BUCKET_MS, SPAN, KEY_SLACK_MS, QUOTA_GRACE_S,
--   estimate, number of windows, per window its RPM and TPM (-1: unlimited), per quota its
--   budget and period.
-- Returns {now, admitted (0/1), per window its live buckets before this request (a list),
--   per quota its tokens used before this request}.

local now = clock(ARGV[1])
local bucket_ms, span, slack_ms, grace_s = tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local estimate, windows = tonumber(ARGV[6]), tonumber(ARGV[7])
local bucket = math.floor(now / bucket_ms)
local seconds = math.floor(now / 1000)
local admitted = 1
local reply = {now, 0}
for i = 1, windows do
  local rpm, tpm = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  local requests, tokens, live = tally(KEYS[i], bucket - span + 1)
  if (rpm >= 0 and requests >= rpm) or (tpm >= 0 and tokens + estimate > tpm) then
    admitted = 0
  end
  reply[#reply + 1] = live
end
local counters = {}
for j = 1, #KEYS - windows do
  local at = 6 + 2 * windows + 2 * j
  local budget = tonumber(ARGV[at])
  local label, finish = period(seconds, ARGV[at + 1])
  local key = KEYS[windows + j] .. label
  local used = tonumber(redis.call('GET', key) or 0)
  if used + estimate > budget then admitted = 0 end
  counters[j] = {key, finish}
  reply[#reply + 1] = used
end
if admitted == 1 then
  for i = 1, windows do
    if tonumber(ARGV[6 + 2 * i]) >= 0 then
      redis.call('HINCRBY', KEYS[i], 'r:' .. bucket, 1)
    end
    if tonumber(ARGV[7 + 2 * i]) >= 0 then
      redis.call('HINCRBY', KEYS[i], 't:' .. bucket, estimate)
    end
    redis.call('PEXPIRE', KEYS[i], (bucket + span) * bucket_ms - now + slack_ms)
  end
  for j = 1, #counters do
    redis.call('INCRBY', counters[j][1], estimate)
    redis.call('EXPIRE', counters[j][1], counters[j][2] + grace_s - seconds)
  end
end
reply[2] = admitted
return reply
