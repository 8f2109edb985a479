-- Remove up to ARGV[6] expired connections. Returns JSON list of departures.
return cjson.encode(sweep(tonumber(ARGV[6])))
