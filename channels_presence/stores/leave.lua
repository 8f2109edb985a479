-- Remove a connection from groups. ARGV[6] channel, [7] groups (JSON list).
-- Returns JSON list of groups the user is no longer in, or nil if not recorded.
local c = ARGV[6]
local groups = cjson.decode(ARGV[7])
local rec = load_record(c)
if not rec then return false end
local keep, gone = {}, {}
for _, g in ipairs(rec.g) do
  if contains(groups, g) then gone[#gone + 1] = g else keep[#keep + 1] = g end
end
local left = {}
if #gone > 0 then
  rec.g = keep
  save(c, rec)
  local others = rec.u and records_of(rec.u, c)
  for _, g in ipairs(gone) do
    drop_from_group(c, g)
    if rec.u and settle_member(rec.u, g, others) then
      left[#left + 1] = g
      mark_absent(rec.u, g)
    end
  end
end
return cjson.encode(left)
