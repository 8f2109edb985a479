-- The heartbeat of one process: push every local connection's deadline
-- forward, write back those that are missing (the store was flushed or
-- restarted), report those removed elsewhere, then sweep a bounded batch of
-- expired entries of any process.
-- ARGV[6] JSON list of [channel, user, session, connected_at, groups, meta]
-- ('' for None), ARGV[7] sweep batch size, ARGV[8] max sessions ('' = no
-- limit), ARGV[9] session scope.
-- Returns JSON [closed [channel, why] pairs, expired departures, restored count,
-- settled [user, group or false] pairs].
local items = cjson.decode(ARGV[6])
local batch = tonumber(ARGV[7])
local max_sessions = tonumber(ARGV[8])
local scope = ARGV[9]

-- Whether writing back c (of user u, session s) would take u past the limit:
-- a connect that landed between the flush and this heartbeat saw none of u's
-- older connections, so the limit is applied here too.
local function over_limit(c, u, s)
  if not u or not max_sessions then return false end
  local sessions, n = {}, 0
  for _, o in ipairs(records_of(u, c)) do
    if is_live(o[1]) then
      local sid = (scope == 'session' and o[2].s) or ('channel:' .. o[1])
      if not sessions[sid] then
        sessions[sid] = true
        n = n + 1
      end
    end
  end
  local mine = (scope == 'session' and s) or ('channel:' .. c)
  return not sessions[mine] and n >= max_sessions
end
local deadline = NOW + TTL
local closed, restored = {}, 0
-- Keys whose expiry to push forward, each once however many connections share it.
local touched = {}

for _, it in ipairs(items) do
  local c = it[1]
  local why = redis.call('GET', gone_key(c))
  if why then
    closed[#closed + 1] = {c, why}
  else
    local rec = load_record(c)
    if rec then
      redis.call('ZADD', K_ALIVE, deadline, c)
      local u = rec.u
      -- Put back an index entry a partial loss may have taken.
      if u then add_channel(u, c) end
      for _, g in ipairs(rec.g) do
        local gk = group_key(g)
        redis.call('ZADD', gk, deadline, c)
        if not touched[gk] then
          -- Every refreshed entry gets the same deadline: once per group is enough.
          touched[gk] = true
          redis.call('ZADD', K_GROUPS, 'GT', deadline, g)
        end
        if u then
          local mk = members_key(g)
          redis.call('ZADD', mk, 'GT', deadline, u)
          touched[mk] = true
        end
      end
    else
      local t = tonumber(it[4])
      if not t or t <= 0 then t = NOW end
      t = millis(t)
      local groups = it[5]
      if type(groups) ~= 'table' then groups = {} end
      local u, s = opt(it[2]), opt(it[3])
      if over_limit(c, u, s) then
        closed[#closed + 1] = {c, 'superseded'}
      else
        record(c, {u = u, s = s, t = t, g = groups, m = opt(it[6])}, deadline)
        restored = restored + 1
      end
    end
  end
end
for key in pairs(touched) do touch(key) end
touch_shared()

-- Sweep after refreshing, so this process's own late entries are not swept.
local expired = {}
local settled = {}
if batch > 0 then
  expired = sweep(batch)
  settled = settle(batch)
end
return cjson.encode({closed, expired, restored, settled})
