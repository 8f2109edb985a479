-- Record a connection, enforce the session policy, join its groups and evict
-- older sessions: one atomic step, so two racing connects of one user can
-- never both get past a limit.
-- ARGV[6] channel, [7] user ('' = anonymous), [8] session ('' = none),
-- [9] groups (JSON list), [10] meta (JSON text, '' = none),
-- [11] max sessions ('' = unlimited), [12] scope, [13] on_limit,
-- [14] connected_at (0 = now on the server's clock).
-- Returns JSON [accepted, came_online, user_joined, evicted departures].
local c = ARGV[6]
local u = opt(ARGV[7])
local s = opt(ARGV[8])
local groups = cjson.decode(ARGV[9])
local meta = opt(ARGV[10])
local max_sessions = tonumber(ARGV[11])
local scope, on_limit = ARGV[12], ARGV[13]
local connected_at = tonumber(ARGV[14])
if not connected_at or connected_at <= 0 then connected_at = NOW end
connected_at = millis(connected_at)

local function session_of(channel, session)
  if scope == 'session' and session then return session end
  return 'channel:' .. channel
end

local evict = {}
-- Anonymous connections are never limited.
if u and max_sessions then
  -- The user's live sessions, oldest first (the user index is in connect
  -- order, so a session's position is that of its first connection).
  local sessions, order = {}, {}
  for _, o in ipairs(records_of(u, c)) do
    if is_live(o[1]) then
      local sid = session_of(o[1], o[2].s)
      local members = sessions[sid]
      if not members then
        members = {}
        sessions[sid] = members
        order[#order + 1] = sid
      end
      members[#members + 1] = o[1]
    end
  end
  -- A connection of a session that is already live is not a new session.
  if not sessions[session_of(c, s)] and #order >= max_sessions then
    if on_limit == 'reject_new' then
      return cjson.encode({false})
    end
    for i = 1, #order - max_sessions + 1 do
      for _, oc in ipairs(sessions[order[i]]) do evict[#evict + 1] = oc end
    end
  end
end

-- Channel names are unique per connection; connecting one that is already
-- recorded replaces its record.
local old, old_raw = load_record(c)
if old then remove(c, old, old_raw, false) end

local came_online, joined = record(c, {u = u, s = s, t = connected_at, g = groups, m = meta}, NOW + TTL)
touch_shared()

-- Evict after recording, so user_left / went_offline account for the new connection.
local evicted = {}
for _, oc in ipairs(evict) do
  local orec, oraw = load_record(oc)
  if orec then evicted[#evicted + 1] = remove(oc, orec, oraw, 'superseded') end
end
return cjson.encode({true, came_online, joined, evicted, connected_at})
