-- owned(stream, group, consumer, id): whether the entry is pending for this consumer (false
-- when the group does not exist: Redis lost it).
local function owned(stream, group, consumer, id)
  local ok, pending = pcall(redis.call, 'XPENDING', stream, group, id, id, 1, consumer)
  return ok and #pending > 0
end
