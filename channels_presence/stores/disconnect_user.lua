-- Remove every connection of a user, oldest first. ARGV[6] user, ARGV[7]
-- session key ('' = every session), ARGV[8] why (kept in the tombstones).
-- Returns JSON list of departures; the last one reports went_offline.
local session = opt(ARGV[7])
local deps = {}
for _, o in ipairs(records_of(ARGV[6], nil)) do
  if not session or o[2].s == session then
    local rec, raw = load_record(o[1])
    deps[#deps + 1] = remove(o[1], rec, raw, ARGV[8])
  end
end
return cjson.encode(deps)
