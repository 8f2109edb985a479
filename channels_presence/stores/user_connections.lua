-- The live connections of the user ARGV[6], oldest first.
-- Returns JSON list of [channel, raw record].
local out = {}
for _, c in ipairs(channels_of(ARGV[6])) do
  if is_live(c) then
    local raw = redis.call('HGET', K_CONN, c)
    if raw then out[#out + 1] = {c, raw} end
  end
end
return cjson.encode(out)
