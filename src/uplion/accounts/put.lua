-- KEYS[1]: a principal's key; ARGV[1]: the new record; ARGV[2]: '1' if that record is revoked.
-- A revocation is final: a record that is not revoked never replaces a revoked one. (The mark of
-- an unknown token is not a record: it is replaced, and its TTL goes with it.)
if ARGV[2] == '0' then
  local old = redis.call('GET', KEYS[1])
  if old then
    local ok, record = pcall(cjson.decode, old)
    if ok and type(record) == 'table' and record.revoked then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
