-- Add a recorded connection to groups. ARGV[6] channel, [7] groups (JSON list).
-- Returns JSON list of groups the user newly joined, or nil if not recorded.
local c = ARGV[6]
local groups = cjson.decode(ARGV[7])
local rec = load_record(c)
if not rec then return false end
-- Joining does not extend the connection's life; only heartbeats do.
local deadline = deadline_of(c) or (NOW + TTL)
local joined = {}
for _, g in ipairs(groups) do
  if not contains(rec.g, g) then
    rec.g[#rec.g + 1] = g
    if add_to_group(c, rec.u, g, deadline) and not back_in_time(rec.u, g) then
      joined[#joined + 1] = g
    end
  end
end
save(c, rec)
touch_shared()
return cjson.encode(joined)
