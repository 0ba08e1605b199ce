-- append(stream, minid, task, deliveries): XADD with MINID trimming; a released task carries how
-- many times it was delivered already (field 'd'). When trimming removed entries a group had not
-- read yet (no worker for longer than the task TTL), Redis would go on counting them in the
-- group's lag forever; the group's read counter is set right at once: every entry before the
-- first one left counts as read.
local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
end
local function before(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms < b_ms or (a_ms == b_ms and tonumber(a_seq) < tonumber(b_seq))
end
local function append(stream, minid, task, deliveries)
  local id
  if deliveries == '0' then
    id = redis.call('XADD', stream, 'MINID', '~', minid, '*', 't', task)
  else
    id = redis.call('XADD', stream, 'MINID', '~', minid, '*', 't', task, 'd', deliveries)
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local first_entry = field(info, 'first-entry')
  if not first_entry then return id end  -- trimmed empty: only with clocks a TTL apart
  local first = first_entry[1]
  local read = field(info, 'entries-added') - field(info, 'length')
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local last = field(group, 'last-delivered-id')
    if before(last, first) and field(group, 'entries-read') ~= read then
      redis.call('XGROUP', 'SETID', stream, field(group, 'name'), last, 'ENTRIESREAD', read)
    end
  end
  return id
end
