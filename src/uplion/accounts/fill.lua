-- KEYS[1]: a principal's key; ARGV[1]: the record read from the database; ARGV[2]: the mark of
-- an unknown token. Stores the record unless a writer stored one meanwhile (a mark is replaced:
-- the token was created since); returns what the key holds afterwards.
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[2] then return old end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
