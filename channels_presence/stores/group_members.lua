-- The live connections of the group KEYS[5], with their records.
-- Returns JSON list of [channel, raw record].
local out = {}
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], AFTER_NOW, '+inf')) do
  local raw = redis.call('HGET', K_CONN, c)
  if raw then out[#out + 1] = {c, raw} end
end
return cjson.encode(out)
