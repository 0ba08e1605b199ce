-- Windows of buckets (see rules.py). A window is a HASH: field 'r:<bucket>' the requests admitted
-- in that bucket, 't:<bucket>' their tokens. The constants come from rules.py through ARGV:
-- clock(given) is ARGV's time if given, else the server's; tally(key, oldest) deletes the fields
-- of buckets older than `oldest` and returns the requests, the tokens and the live buckets
-- ({bucket, requests, tokens, ...}, oldest first). Fields are added only after a tally, in the
-- current bucket, so a HASH never holds fields of more than SPAN buckets: HGETALL reads at most
-- 2 * SPAN fields, however many requests the window counts.

local function clock(given)
  if given ~= '' then return tonumber(given) end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function tally(key, oldest)
  local fields = redis.call('HGETALL', key)
  local counts, order, gone = {}, {}, {}
  for i = 1, #fields, 2 do
    local bucket = tonumber(string.sub(fields[i], 3))
    if bucket < oldest then
      gone[#gone + 1] = fields[i]
    else
      local entry = counts[bucket]
      if entry == nil then
        entry = {0, 0}
        counts[bucket] = entry
        order[#order + 1] = bucket
      end
      local slot = 2
      if string.sub(fields[i], 1, 1) == 'r' then slot = 1 end
      entry[slot] = tonumber(fields[i + 1])
    end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  table.sort(order)
  local requests, tokens, live = 0, 0, {}
  for _, bucket in ipairs(order) do
    local entry = counts[bucket]
    requests, tokens = requests + entry[1], tokens + entry[2]
    live[#live + 1] = bucket
    live[#live + 1] = entry[1]
    live[#live + 1] = entry[2]
  end
  return requests, tokens, live
end
