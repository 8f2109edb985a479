-- Replace a connection's metadata. ARGV[6] channel, [7] meta (JSON text, '' = none).
-- Returns 1, or 0 if the connection is not recorded.
local c = ARGV[6]
local rec = load_record(c)
if not rec then return 0 end
rec.m = opt(ARGV[7])
save(c, rec)
return 1
