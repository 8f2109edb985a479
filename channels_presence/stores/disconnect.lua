-- Remove a connection from everything. ARGV[6] channel.
-- Returns a JSON departure, or nil if it was not recorded. The tombstone is
-- written either way: a heartbeat already in flight must not write it back.
local c = ARGV[6]
local rec, raw = load_record(c)
if not rec then
  redis.call('SET', gone_key(c), 'disconnected', 'EX', TOMB_TTL)
  return false
end
return cjson.encode(remove(c, rec, raw, 'disconnected'))
