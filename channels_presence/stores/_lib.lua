-- Shared by every presence script: prepended to each one when it is loaded.
--
-- Every script gets the same first keys and arguments, so one loader serves all:
--   KEYS[1] P:conn    hash  channel -> record (cjson: u user, s session,
--                           t connected_at in ms, g groups, m meta as JSON text)
--   KEYS[2] P:alive   zset  channel -> deadline
--   KEYS[3] P:groups  zset  group -> highest deadline seen (the registry)
--   KEYS[4] P:users   hash  user -> the user's channels, space-separated, oldest first
--   KEYS[5..]         whatever the script reads besides
--   ARGV[1] key prefix, ARGV[2] ttl, ARGV[3] key expiry, ARGV[4] tombstone expiry,
--   ARGV[5] leave grace (seconds; 0 announces departures at once)
--   ARGV[6..]         the script's own arguments
-- Other keys are derived from the prefix. With a {hash tag} in the prefix they
-- all share KEYS[1]'s cluster slot, which is what makes deriving them legal.
--
-- Bookkeeping invariants every script keeps:
--   P:users[u]          u's recorded connections (one hash, not a key per
--                       user: a key costs ~150 bytes more than a field)
--   P:group:<g>         zset channel -> deadline: recorded connections in g
--   P:group:<g>:users   zset u -> max deadline of u's recorded connections in g
-- "Recorded" includes entries past their deadline that no sweep removed yet;
-- reads count only deadlines in the future, events follow the records, so
-- every came_online/user_joined is paired with exactly one went_offline/user_left.

local K_CONN, K_ALIVE, K_GROUPS, K_USERS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local PREFIX = ARGV[1]
local TTL = tonumber(ARGV[2])
local KEY_TTL = tonumber(ARGV[3])
local TOMB_TTL = tonumber(ARGV[4])
local GRACE = tonumber(ARGV[5])

-- The server's clock, so processes on hosts with skewed clocks agree.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local NOW = clock()
-- An exclusive lower bound "after now"; tostring() would round to 14 digits.
local AFTER_NOW = string.format('(%.6f', NOW)

local function group_key(g) return PREFIX .. ':group:' .. g end
local function members_key(g) return PREFIX .. ':group:' .. g .. ':users' end
local function gone_key(c) return PREFIX .. ':gone:' .. c end
-- Departures waiting out the leave grace: zset "u|<user>" or "g|<group>|<user>" -> due.
local K_PENDING = PREFIX .. ':pending'

-- Every key gets an expiry, pushed forward whenever it is written or refreshed.
local function touch(key) redis.call('EXPIRE', key, KEY_TTL) end
local function touch_shared()
  touch(K_CONN); touch(K_ALIVE); touch(K_GROUPS); touch(K_USERS)
  -- Departures may wait out a long grace: keep their zset alive with the rest.
  redis.call('EXPIRE', PREFIX .. ':pending', KEY_TTL)
end

local function contains(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- A connection's record (and its raw text), or nil.
local function load_record(c)
  local raw = redis.call('HGET', K_CONN, c)
  if not raw then return nil, nil end
  local rec = cjson.decode(raw)
  -- cjson writes an empty list as {}, which decodes to an empty table: fine,
  -- but a record without groups must still give ipairs() a table.
  if type(rec.g) ~= 'table' then rec.g = {} end
  return rec, raw
end

local function save(c, rec)
  -- Every byte counts a hundred thousand times: leave out an empty group list.
  local g = rec.g
  if #g == 0 then g = nil end
  redis.call('HSET', K_CONN, c, cjson.encode({u = rec.u, s = rec.s, t = rec.t, g = g, m = rec.m}))
end

-- Seconds on any clock -> whole milliseconds, which cjson keeps exactly.
local function millis(seconds) return math.floor(seconds * 1000 + 0.5) end

-- u's recorded channels, oldest first.
local function channels_of(u)
  local out = {}
  local joined = redis.call('HGET', K_USERS, u)
  if joined then
    for c in string.gmatch(joined, '%S+') do out[#out + 1] = c end
  end
  return out
end

local function set_channels(u, list)
  if #list == 0 then
    redis.call('HDEL', K_USERS, u)
  else
    redis.call('HSET', K_USERS, u, table.concat(list, ' '))
  end
end

-- Append c to u's channels (channel names hold no spaces). True if u had none.
local function add_channel(u, c)
  local list = channels_of(u)
  if not contains(list, c) then
    list[#list + 1] = c
    set_channels(u, list)
  end
  return #list == 1
end

local function deadline_of(c)
  local d = redis.call('ZSCORE', K_ALIVE, c)
  if d then return tonumber(d) end
  return nil
end

local function is_live(c)
  local d = deadline_of(c)
  return d ~= nil and d > NOW
end

-- u's recorded connections other than `except`, oldest first, as {channel, record}.
-- Index entries without a record are pruned on the way.
local function records_of(u, except)
  local out, kept = {}, {}
  local pruned = false
  for _, oc in ipairs(channels_of(u)) do
    local orec = load_record(oc)
    if orec then
      kept[#kept + 1] = oc
      if oc ~= except then out[#out + 1] = {oc, orec} end
    else
      pruned = true
    end
  end
  if pruned then set_channels(u, kept) end
  -- By connect time, not list position: connections written back after a
  -- flush join the list in heartbeat order, but keep their own time.
  table.sort(out, function(a, b)
    local ta, tb = tonumber(a[2].t) or 0, tonumber(b[2].t) or 0
    if ta ~= tb then return ta < tb end
    return a[1] < b[1]
  end)
  return out
end

-- Recompute u's entry in g from u's other recorded connections there, rather
-- than keeping a counter that could drift. True if u has none left in g.
local function settle_member(u, g, others)
  local best = nil
  for _, o in ipairs(others) do
    if contains(o[2].g, g) then
      local d = deadline_of(o[1]) or 0
      if best == nil or d > best then best = d end
    end
  end
  local mk = members_key(g)
  if best == nil then
    redis.call('ZREM', mk, u)
    return true
  end
  redis.call('ZADD', mk, best, u)
  touch(mk)
  return false
end

local function drop_from_group(c, g)
  local gk = group_key(g)
  redis.call('ZREM', gk, c)
  -- An empty zset is deleted by Redis; keep the registry in step with it.
  if redis.call('EXISTS', gk) == 0 then redis.call('ZREM', K_GROUPS, g) end
end

-- Add c to g at `deadline`; true if it is the user's first connection in g.
local function add_to_group(c, u, g, deadline)
  local gk = group_key(g)
  redis.call('ZADD', gk, deadline, c)
  touch(gk)
  redis.call('ZADD', K_GROUPS, 'GT', deadline, g)
  if not u then return false end
  local mk = members_key(g)
  -- GT: the user's entry holds the highest deadline of their connections here.
  local added = redis.call('ZADD', mk, 'GT', deadline, u)
  touch(mk)
  return added == 1
end

-- Start the leave grace of a departure (from group g, or altogether when g is nil).
local function mark_absent(u, g)
  if GRACE <= 0 then return end
  local item = g and ('g|' .. g .. '|' .. u) or ('u|' .. u)
  redis.call('ZADD', K_PENDING, NOW + GRACE, item)
  touch(K_PENDING)
end

-- Cancel a pending departure: true if there was one (the user is back in time).
local function back_in_time(u, g)
  local item = g and ('g|' .. g .. '|' .. u) or ('u|' .. u)
  return redis.call('ZREM', K_PENDING, item) == 1
end

-- Write a connection everywhere. Returns came_online and the groups joined.
local function record(c, rec, deadline)
  local u = rec.u
  local came_online = false
  local joined = {}
  save(c, rec)
  redis.call('ZADD', K_ALIVE, deadline, c)
  -- An explicit (re)connect overrides an earlier removal of the same name.
  redis.call('DEL', gone_key(c))
  if u then came_online = add_channel(u, c) and not back_in_time(u, nil) end
  for _, g in ipairs(rec.g) do
    if add_to_group(c, u, g, deadline) and not back_in_time(u, g) then
      joined[#joined + 1] = g
    end
  end
  return came_online, joined
end

-- Remove a recorded connection from everything. Returns a departure:
-- {channel, raw record, groups the user left, went offline}. With `tombstone`
-- the name is remembered for a while so a late heartbeat reports it closed
-- instead of writing it back.
local function remove(c, rec, raw, tombstone)
  redis.call('HDEL', K_CONN, c)
  redis.call('ZREM', K_ALIVE, c)
  local u = rec.u
  local left = {}
  local offline = false
  local others = nil
  if u then
    others = records_of(u, c)
    local rest = {}
    for _, o in ipairs(others) do rest[#rest + 1] = o[1] end
    set_channels(u, rest)
  end
  for _, g in ipairs(rec.g) do
    drop_from_group(c, g)
    if u and settle_member(u, g, others) then left[#left + 1] = g end
  end
  if u then
    offline = #others == 0
    for _, g in ipairs(left) do mark_absent(u, g) end
    if offline then mark_absent(u, nil) end
  end
  -- The tombstone holds why, so a heartbeat that meets it closes with the right code.
  if tombstone then redis.call('SET', gone_key(c), tombstone, 'EX', TOMB_TTL) end
  return {c, raw, left, offline}
end

-- Remove up to `limit` connections whose deadline has passed, of any process.
-- Atomic, so racing sweepers never report the same departure twice.
local function sweep(limit)
  local out = {}
  local due = redis.call('ZRANGEBYSCORE', K_ALIVE, '-inf', string.format('%.6f', NOW),
    'LIMIT', 0, limit)
  for _, c in ipairs(due) do
    local rec, raw = load_record(c)
    if rec then
      out[#out + 1] = remove(c, rec, raw, 'expired')
    else
      redis.call('ZREM', K_ALIVE, c)
    end
  end
  return out
end

local function opt(s)
  if s == '' then return nil end
  return s
end

-- Claim up to `limit` departures whose grace has run out, atomically, so each
-- is announced by exactly one caller. One whose user is back (a refresh wrote
-- them in again) is dropped without an announcement.
-- Returns a list of {user, group or false}.
local function settle(limit)
  local out = {}
  local due = redis.call('ZRANGEBYSCORE', K_PENDING, '-inf', string.format('%.6f', NOW),
    'LIMIT', 0, limit)
  for _, item in ipairs(due) do
    redis.call('ZREM', K_PENDING, item)
    if string.sub(item, 1, 2) == 'u|' then
      local u = string.sub(item, 3)
      local back = false
      for _, c in ipairs(channels_of(u)) do
        if is_live(c) then back = true end
      end
      if not back then out[#out + 1] = {u, false} end
    else
      local rest = string.sub(item, 3)
      local bar = string.find(rest, '|', 1, true)
      local g, u = string.sub(rest, 1, bar - 1), string.sub(rest, bar + 1)
      local score = redis.call('ZSCORE', members_key(g), u)
      if not (score and tonumber(score) > NOW) then out[#out + 1] = {u, g} end
    end
  end
  return out
end
