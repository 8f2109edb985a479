-- Every group with a live connection, with its size: JSON list of [group, size].
local out = {}
for _, g in ipairs(redis.call('ZRANGEBYSCORE', K_GROUPS, AFTER_NOW, '+inf')) do
  local n = redis.call('ZCOUNT', group_key(g), AFTER_NOW, '+inf')
  if n > 0 then out[#out + 1] = {g, n} end
end
return cjson.encode(out)
