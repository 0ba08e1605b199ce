-- KEYS[1]: the topic's stream; ARGV: MINID, encoded task. (After append.lua.)
return append(KEYS[1], ARGV[1], ARGV[2], '0')
