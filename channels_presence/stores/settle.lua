-- Claim up to ARGV[6] departures whose leave grace has run out.
-- Returns JSON list of [user, group or false].
return cjson.encode(settle(tonumber(ARGV[6])))
