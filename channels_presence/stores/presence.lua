-- channels-presence: the Redis function library (loaded once with FUNCTION LOAD).
--
-- The store prepends "#!lua name=<LIB>" and "local LIB = '<LIB>'", LIB being
-- "chpresence_" plus a digest of this file, so processes of two package
-- versions (a rolling upgrade) each call their own functions.
--
-- Every function takes the same first arguments:
--   ARGV[1] key prefix P, ARGV[2] TTL (s), ARGV[3] leave grace (s),
--   ARGV[4] expiry of notices (s), ARGV[5..] its own.
-- KEYS[1] names the key the call is about (for routing on a cluster).
--
-- Key layout. The text in braces is the Redis Cluster hash tag: every key of
-- one user, one group or one node lives in one slot, and the three global
-- keys share the tag "~". P never contains "/", so two prefixes never share
-- a key.
--   P/u{<user>}        hash, one per user with connections:
--                        <cid>      "<connected_at ms, 8 base-36 digits><channel>[\t<session>]"
--                                   (the Django session key, when there is one; kept
--                                   within 64 bytes, Redis keeps the hash compact)
--                        <cid>|g    groups, comma-separated (when there are any)
--                        <cid>|m    metadata, JSON          (when set)
--                        #          number of connections
--                        S          sessions, oldest first, space-separated
--                        s|<sid>    connections of session <sid>
--                      (S and s|* only under SESSION_SCOPE="session" with a limit)
--   P/g{<group>}       hash  user -> that user's connections in the group
--   P/g{<group>}/n     string: connections in the group
--   P/g{<group>}/a     set   anonymous connections in the group (their cids)
--   P/g{<group>}/c     set   on a Redis Cluster only: the user connections
--                            counted in the group (their cids), so that a
--                            step replayed after a retry or a crash counts once
--   P/u{<user>}/f      hash  logout fences: <session> -> 1, * -> when (ms); expires
--   P/n{<node>}        hash  c: channel prefix, b: buckets in use, w: the node's
--                            own writes (a snapshot restore shows fewer), live: set by
--                            the node's own heartbeat (a node hash without it
--                            was lost and rebuilt by connects: write back),
--                            r: where a walk over its buckets goes on (every
--                            bucket before it is empty), dead: when it was counted out
--                            (then the hash is a marker that expires after a day)
--   P/n{<node>}/<k>    hash  seq -> user ("" when anonymous): the node's
--                            connections, 128 a bucket (a small encoding)
--   P/n{<node>}/a      hash  records of the node's anonymous connections (as P/u)
--   P/n{<node>}/x      list  "<seq>\t<reason>\t<code>": connections of the
--                            node removed by someone else, for its heartbeat
--   P/{~}nodes         zset  node -> deadline (server clock): liveness
--   P/{~}pending       zset  departures waiting out the leave grace -> due:
--                            "u\t<user>", "g\t<group>\t<user>"
--   P/{~p<k>}pending   zset  the same on a Redis Cluster, in 16 shards (k: 0-f,
--                            by the user), so that no primary takes them all
--   P/{~}groups        zset  non-empty groups (score 0, in name order)
--   P/{~}groupsv       hash  on a Redis Cluster only: group -> when its slot
--                            last saw it fill (while it is listed)
--
-- A node is one event loop of one server process. A connection id (cid) is
-- "<node>.<seq>", seq in base 36, given by the node. A channel is stored as
-- the part after the node's channel prefix, or "=" and the whole name.
--
-- Invariants every function keeps:
--   * a connection is recorded in its user's hash (or its node's anonymous
--     hash), in its node's bucket, and in each of its groups, or nowhere;
--   * P/g{g}/n counts the connections of g; P/g{g} counts each user's;
--     P/{~}groups lists exactly the groups whose count is positive;
--   * a connection counts while its node is in P/{~}nodes; a node whose
--     deadline passed is reaped (all its connections removed) in bounded
--     batches by whichever heartbeat comes first, each batch atomic, so
--     every departure is reported once;
--   * no function does work that grows with a population: loops are over
--     the groups of one call, one user's sessions (at most MAX_SESSIONS), at
--     most WALK of a node's buckets, or a batch whose size the caller bounds.
-- A key lost on its own (evicted under maxmemory, deleted by hand) breaks the
-- first two for some connections; the functions mend them (see "Partial
-- loss"): a disconnect whose record is gone while its bucket entry is not
-- counts it out of the groups its node names, and each beat audits a slice
-- of its node's live connections, which `repair` puts back whole.
--
-- On a Redis Cluster (the c_* functions at the end, one slot a call) the
-- same invariants hold once an operation's steps are all done. What stays
-- atomic: everything about one user (the session limit and the per-user
-- connection limit are decided and written in one call on the user's slot,
-- so racing connects from any number of nodes cannot pass them), one
-- group's counts, one node's buckets. What is eventually consistent, for the
-- milliseconds between the steps of one operation: a new connection is in
-- its user's record before its groups count it (and out of its groups'
-- counts before its record goes); the group registry P/{~}groups and the
-- pending departures P/{~}pending follow the group steps. groups() reads the
-- counts themselves, so it never lists an empty group. Memory: one more set
-- member per (user connection, group) in P/g{g}/c. The audit of partial
-- loss (`repair`) runs on one Redis only; a cluster beat audits nothing.

local BUCKET = 128
-- Buckets one call looks through at most for the next one in use: a node
-- that served millions of connections has thousands of empty ones, and a
-- walk goes on where the last one stopped (the node's r).
local WALK = 1024
-- Seconds the marker of a counted-out node lives: a process that wakes from
-- a stall shorter than this learns it was counted out, and closes its sockets.
local TOMBSTONE = 86400
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

local function context(args)
  local t = redis.call('TIME')
  return {
    P = args[1],
    TTL = tonumber(args[2]),
    GRACE = tonumber(args[3]),
    KEEP = tonumber(args[4]),
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000,
    prefixes = {},
  }
end

local function opt(s)
  if s == nil or s == '' or s == false then return nil end
  return s
end

local function split(s, sep)
  local out = {}
  if not s or s == '' then return out end
  local start = 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

-- Milliseconds in 8 base-36 digits (enough until 2059), so no separator follows.
local function b36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(DIGITS, d + 1, d + 1) .. s
    n = math.floor(n / 36)
  until n == 0
  return string.rep('0', 8 - #s) .. s
end

-- Keys ------------------------------------------------------------------------

-- User keys go into a key name; unusual ones by digest (the hash itself never
-- needs the name back: groups and buckets hold the real user key).
local function user_tag(u)
  if #u <= 64 and string.match(u, '^[%w_%.@%-]+$') then return u end
  return '~' .. string.sub(redis.sha1hex(u), 1, 24)
end
local function k_user(C, u) return C.P .. '/u{' .. user_tag(u) .. '}' end
local function k_group(C, g) return C.P .. '/g{' .. g .. '}' end
local function k_gcount(C, g) return C.P .. '/g{' .. g .. '}/n' end
local function k_ganon(C, g) return C.P .. '/g{' .. g .. '}/a' end
local function k_node(C, n) return C.P .. '/n{' .. n .. '}' end
local function k_bucket(C, n, b) return C.P .. '/n{' .. n .. '}/' .. b end
local function k_anon(C, n) return C.P .. '/n{' .. n .. '}/a' end
local function k_inbox(C, n) return C.P .. '/n{' .. n .. '}/x' end
local function k_nodes(C) return C.P .. '/{~}nodes' end
-- On a cluster, pending departures are spread over shards (the caller names
-- the shard's key, P/{~p<k>}pending, as KEYS[1] of c_grace and c_claim).
local function k_pending(C) return C.PENDING or (C.P .. '/{~}pending') end
local function k_registry(C) return C.P .. '/{~}groups' end

local function node_of(cid)
  local i = string.find(cid, '.', 1, true)
  return string.sub(cid, 1, i - 1), string.sub(cid, i + 1)
end

local function bucket_of(seq) return math.floor(tonumber(seq, 36) / BUCKET) end

-- Where a connection's record lives.
local function holder(C, u, cid)
  if u then return k_user(C, u) end
  return k_anon(C, (node_of(cid)))
end

-- The session key kept in a record's value, or nil.
local function session_in(rec)
  local tab = string.find(rec, '\t', 9, true)
  if not tab then return nil end
  return string.sub(rec, tab + 1)
end

-- The channel prefix of a node, remembered for the reply (the caller turns
-- stored channel parts back into names).
local function note_prefix(C, node)
  if C.prefixes[node] == nil then
    C.prefixes[node] = redis.call('HGET', k_node(C, node), 'c') or ''
  end
end

-- Leave grace -------------------------------------------------------------------

local function pending_item(u, g)
  if g then return 'g\t' .. g .. '\t' .. u end
  return 'u\t' .. u
end

local function mark_absent(C, u, g)
  if C.GRACE <= 0 then return end
  redis.call('ZADD', k_pending(C), C.NOW + C.GRACE, pending_item(u, g))
end

-- Cancel a pending departure: true if there was one (the user is back in time).
local function back_in_time(C, u, g)
  if C.GRACE <= 0 then return false end
  return redis.call('ZREM', k_pending(C), pending_item(u, g)) == 1
end

-- Groups ------------------------------------------------------------------------

-- Count one connection into g; true if it is the user's first there.
local function group_add(C, g, u, cid)
  if redis.call('INCR', k_gcount(C, g)) == 1 then
    redis.call('ZADD', k_registry(C), 0, g)
  end
  if u then return redis.call('HINCRBY', k_group(C, g), u, 1) == 1 end
  redis.call('SADD', k_ganon(C, g), cid)
  return false
end

-- Count one connection out of g; true if it was the user's last there.
local function group_remove(C, g, u, cid)
  local nk = k_gcount(C, g)
  if redis.call('DECR', nk) <= 0 then
    redis.call('DEL', nk)
    redis.call('ZREM', k_registry(C), g)
  end
  if u then
    local gk = k_group(C, g)
    if redis.call('HINCRBY', gk, u, -1) <= 0 then
      redis.call('HDEL', gk, u)
      return true
    end
    return false
  end
  redis.call('SREM', k_ganon(C, g), cid)
  return false
end

-- Sessions (SESSION_SCOPE="session" with a limit) ----------------------------------

local function session_id(cid, s)
  return s or ('=' .. cid)
end

local function drop_session(hk, sid)
  redis.call('HDEL', hk, 's|' .. sid)
  local kept = {}
  for _, x in ipairs(split(redis.call('HGET', hk, 'S'), ' ')) do
    if x ~= sid then kept[#kept + 1] = x end
  end
  if #kept == 0 then
    redis.call('HDEL', hk, 'S')
  else
    redis.call('HSET', hk, 'S', table.concat(kept, ' '))
  end
end

-- Records -------------------------------------------------------------------------

-- Bucket b of node now holds an entry: the node's bucket count covers it,
-- and the cursor of a walk over its buckets (r) does not lie past it.
local function place(C, node, b)
  local nk = k_node(C, node)
  local top, r = unpack(redis.call('HMGET', nk, 'b', 'r'))
  if b >= (tonumber(top) or 0) then redis.call('HSET', nk, 'b', b + 1) end
  if r and b < tonumber(r) then redis.call('HSET', nk, 'r', b) end
end

-- Write a connection's record: its user's (or node's) hash and its bucket
-- entry, not its groups. Returns the user's connection count.
local function write_record(C, cid, u, s, t36, chan, groups, meta, scoped)
  local hk = holder(C, u, cid)
  local fields = {cid, s and (t36 .. chan .. '\t' .. s) or (t36 .. chan)}
  if #groups > 0 then
    fields[#fields + 1] = cid .. '|g'
    fields[#fields + 1] = table.concat(groups, ',')
  end
  if meta then fields[#fields + 1] = cid .. '|m'; fields[#fields + 1] = meta end
  redis.call('HSET', hk, unpack(fields))
  local count = redis.call('HINCRBY', hk, '#', 1)
  local node, seq = node_of(cid)
  local b = bucket_of(seq)
  redis.call('HSET', k_bucket(C, node, b), seq, u or '')
  place(C, node, b)
  if u and scoped then
    local sid = session_id(cid, s)
    if redis.call('HINCRBY', hk, 's|' .. sid, 1) == 1 then
      local order = redis.call('HGET', hk, 'S')
      redis.call('HSET', hk, 'S', order and (order .. ' ' .. sid) or sid)
    end
  end
  return count
end

-- Write a connection everywhere. Returns came_online and the groups joined.
local function record(C, cid, u, s, t36, chan, groups, meta, scoped)
  local count = write_record(C, cid, u, s, t36, chan, groups, meta, scoped)
  local came_online = false
  if u then came_online = count == 1 and not back_in_time(C, u, nil) end
  local joined = {}
  for _, g in ipairs(groups) do
    if group_add(C, g, u, cid) and not back_in_time(C, u, g) then
      joined[#joined + 1] = g
    end
  end
  return came_online, joined
end

-- Whether g counts the connection (for a user: counts the user at all).
local function counted(C, g, u, cid)
  if u then return (tonumber(redis.call('HGET', k_group(C, g), u)) or 0) > 0 end
  return redis.call('SISMEMBER', k_ganon(C, g), cid) == 1
end

-- A connection whose record was lost (evicted, deleted) though it was never
-- removed: its bucket entry says so. Its groups, as its node knows them
-- (`known`), are counted out where they still count it. Returns a departure
-- whose record is false, or nil when nothing of it was left.
local function remove_lost(C, u, cid, known)
  local node, seq = node_of(cid)
  if redis.call('HDEL', k_bucket(C, node, bucket_of(seq)), seq) == 0 then return nil end
  local groups = split(known, ',')
  local left = {}
  for _, g in ipairs(groups) do
    if counted(C, g, u, cid) and group_remove(C, g, u, cid) then left[#left + 1] = g end
  end
  local offline = false
  if u then
    offline = (tonumber(redis.call('HGET', k_user(C, u), '#')) or 0) <= 0
    for _, g in ipairs(left) do mark_absent(C, u, g) end
    if offline then mark_absent(C, u, nil) end
  end
  note_prefix(C, node)
  return {cid, u or false, false, false, #groups > 0 and known or false, false, left, offline}
end

-- Remove a recorded connection from everything. `why` (with a close code)
-- tells its node's heartbeat to close it: someone else removed it. Returns
-- a departure {cid, user, record, session, groups, meta, left, offline}, or nil.
-- `known`: the groups the connection's node knows it in, for a record lost.
local function remove(C, u, cid, why, code, known)
  local hk = holder(C, u, cid)
  local rec = redis.call('HMGET', hk, cid, cid .. '|g', cid .. '|m')
  if not rec[1] then
    if known then return remove_lost(C, u, cid, known) end
    return nil
  end
  redis.call('HDEL', hk, cid, cid .. '|g', cid .. '|m')
  local session = session_in(rec[1])
  local count = redis.call('HINCRBY', hk, '#', -1)
  local node, seq = node_of(cid)
  local bk = k_bucket(C, node, bucket_of(seq))
  redis.call('HDEL', bk, seq)
  local groups = split(rec[2], ',')
  local left = {}
  for _, g in ipairs(groups) do
    if group_remove(C, g, u, cid) then left[#left + 1] = g end
  end
  local offline = false
  if u then
    local sid = session_id(cid, session)
    local sk = 's|' .. sid
    if redis.call('HEXISTS', hk, sk) == 1 and redis.call('HINCRBY', hk, sk, -1) <= 0 then
      drop_session(hk, sid)
    end
    offline = count <= 0
    for _, g in ipairs(left) do mark_absent(C, u, g) end
    if offline then mark_absent(C, u, nil) end
  end
  if count <= 0 then redis.call('DEL', hk) end
  if why then
    local ik = k_inbox(C, node)
    redis.call('RPUSH', ik, seq .. '\t' .. why .. '\t' .. code)
    redis.call('EXPIRE', ik, C.KEEP)
  end
  note_prefix(C, node)
  return {cid, u or false, rec[1], session or false, rec[2] or false, rec[3] or false, left, offline}
end

-- The records of a holder hash, from HGETALL's flat reply: {cid -> {rec, s, g, m}}.
local function records(flat)
  local by, order = {}, {}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local bar = string.find(f, '|', 1, true)
    if bar then
      local cid = string.sub(f, 1, bar - 1)
      if string.find(cid, '.', 1, true) then
        local r = by[cid] or {}
        by[cid] = r
        r[string.sub(f, bar + 1)] = v
      end
    elseif string.find(f, '.', 1, true) then
      local r = by[f] or {}
      by[f] = r
      r.rec = v
      order[#order + 1] = f
    end
  end
  return by, order
end

-- Whether a node still beats (listings leave out a dead node's connections
-- before they are reaped; counts include them until then).
local function alive(C, node)
  if C.alive == nil then C.alive = {} end
  local known = C.alive[node]
  if known == nil then
    local d = redis.call('ZSCORE', k_nodes(C), node)
    known = d ~= false and d ~= nil and tonumber(d) > C.NOW
    C.alive[node] = known
  end
  return known
end

local function record_reply(C, cid, u, r)
  note_prefix(C, (node_of(cid)))
  return {cid, u or false, r.rec, session_in(r.rec) or false, r.g or false, r.m or false}
end

-- The connection time of a record, for ordering.
local function time_of(rec)
  return tonumber(string.sub(rec, 1, 8), 36) or 0
end

-- Liveness ---------------------------------------------------------------------------

-- A node's hash never expires while the node is listed: it holds what the
-- reaper needs. Only the marker left after reaping expires.
local function register_node(C, node, prefix)
  redis.call('HSETNX', k_node(C, node), 'c', prefix)
  redis.call('ZADD', k_nodes(C), 'NX', C.NOW + C.TTL, node)
end

-- Look for node's first bucket in use from its cursor r on, through at most
-- WALK buckets, and move r there (never past the last bucket, where the node's
-- next connections go). Returns 'found' (r is that bucket), 'more' (none
-- yet: call again) or 'empty' (the node has no connection left).
local function walk(C, node)
  local nk = k_node(C, node)
  local top = tonumber(redis.call('HGET', nk, 'b')) or 0
  local b = tonumber(redis.call('HGET', nk, 'r')) or 0
  local last = math.min(top, b + WALK)
  while b < last and redis.call('EXISTS', k_bucket(C, node, b)) == 0 do b = b + 1 end
  if b >= top then return 'empty' end
  redis.call('HSET', nk, 'r', b)
  if b < last then return 'found' end
  return 'more'
end

-- Remove the connections of dead nodes, at most `budget` units of work
-- (a connection plus one per group). Returns departures and whether work is left.
-- Remove a node's connections from its bucket 'r' on, adding departures to
-- `out` and work to `work` until `budget`. Returns the work done and whether
-- the node has none left.
local function empty_node(C, node, budget, out, work)
  local nk = k_node(C, node)
  local b = tonumber(redis.call('HGET', nk, 'r')) or 0
  local top = tonumber(redis.call('HGET', nk, 'b')) or 0
  while b < top and work < budget do
    local bk = k_bucket(C, node, b)
    -- Looking is work too: a node that served millions has many empty buckets.
    work = work + 1
    local items = redis.call('HGETALL', bk)
    for i = 1, #items, 2 do
      if work >= budget then break end
      local seq, u = items[i], opt(items[i + 1])
      local dep = remove(C, u, node .. '.' .. seq, nil, nil)
      if dep then
        out[#out + 1] = dep
        work = work + 1 + #split(dep[5] or '', ',')
      else
        redis.call('HDEL', bk, seq)
        work = work + 1
      end
    end
    if redis.call('EXISTS', bk) == 1 then break end
    b = b + 1
  end
  redis.call('HSET', nk, 'r', b)
  return work, b >= top
end

local function reap(C, budget)
  local out = {}
  local work = 0
  while work < budget do
    local dead = redis.call('ZRANGEBYSCORE', k_nodes(C), '-inf', '(' .. string.format('%.6f', C.NOW),
      'LIMIT', 0, 1)
    if #dead == 0 then return out, false end
    local node = dead[1]
    local nk = k_node(C, node)
    redis.call('HSETNX', nk, 'dead', string.format('%.3f', C.NOW))
    local done
    work, done = empty_node(C, node, budget, out, work + 1)
    if done then
      -- Done: the node stays only as a marker that it was counted out, so a
      -- process that wakes from a long stall closes its sockets.
      redis.call('ZREM', k_nodes(C), node)
      redis.call('DEL', k_anon(C, node), k_inbox(C, node))
      redis.call('HDEL', nk, 'b', 'r')
      redis.call('EXPIRE', nk, math.max(C.KEEP, TOMBSTONE))
    end
  end
  return out, true
end

-- Claim up to `limit` departures whose grace ran out. A user who is back is
-- dropped without an announcement. Returns {user, group or false} pairs.
local function settle(C, limit)
  local out = {}
  local due = redis.call('ZRANGEBYSCORE', k_pending(C), '-inf', string.format('%.6f', C.NOW),
    'LIMIT', 0, limit)
  for _, item in ipairs(due) do
    redis.call('ZREM', k_pending(C), item)
    local parts = split(item, '\t')
    if parts[1] == 'u' then
      if redis.call('EXISTS', k_user(C, parts[2])) == 0 then out[#out + 1] = {parts[2], false} end
    elseif redis.call('HEXISTS', k_group(C, parts[2]), parts[3]) == 0 then
      out[#out + 1] = {parts[3], parts[2]}
    end
  end
  return out, #due >= limit
end

-- Logout fences -------------------------------------------------------------------

-- P/u{<user>}/f  hash  <session> -> 1, * -> when the whole user logged out (ms);
-- it expires a few minutes after the latest logout.
local function k_fence(C, u) return k_user(C, u) .. '/f' end

-- Whether a connect of u (session s, socket opened at `opened` ms) is one a
-- logout must stop.
local function fenced(C, u, s, opened)
  local fk = k_fence(C, u)
  if redis.call('EXISTS', fk) == 0 then return false end
  if s and redis.call('HEXISTS', fk, s) == 1 then return true end
  local at = tonumber(redis.call('HGET', fk, '*'))
  return at ~= nil and opened ~= nil and opened <= at
end

-- The session policy ---------------------------------------------------------------

-- Decide whether cid may connect. Returns status (1 yes, 0 refused by the
-- limit, -2 too many connections), the cids to evict now and the sessions to
-- evict in batches by the caller.
local function admit(C, hk, cid, s, max, scope, on_limit, per_user)
  -- dropped: sessions that make room; leaving: their connections, evicted in
  -- batches by the caller, so not in `evict`.
  local evict, sessions, dropped, leaving = {}, {}, {}, 0
  local count = tonumber(redis.call('HGET', hk, '#')) or 0
  if max then
    if scope == 'session' then
      local sid = session_id(cid, s)
      if redis.call('HEXISTS', hk, 's|' .. sid) == 0 then
        local order = split(redis.call('HGET', hk, 'S'), ' ')
        if #order >= max then
          if on_limit == 'reject_new' then return 0, evict, sessions end
          for i = 1, #order - max + 1 do
            local old = order[i]
            dropped[#dropped + 1] = old
            if string.sub(old, 1, 1) == '=' then
              evict[#evict + 1] = string.sub(old, 2)
            else
              sessions[#sessions + 1] = old
              leaving = leaving + (tonumber(redis.call('HGET', hk, 's|' .. old)) or 0)
            end
          end
        end
      end
    elseif count >= max then
      if on_limit == 'reject_new' then return 0, evict, sessions end
      -- Every connection is a session, so there are about `max` of them.
      local by, order = records(redis.call('HGETALL', hk))
      table.sort(order, function(a, b)
        local ta, tb = time_of(by[a].rec), time_of(by[b].rec)
        if ta ~= tb then return ta < tb end
        return a < b
      end)
      for i = 1, count - max + 1 do evict[#evict + 1] = order[i] end
    end
  end
  -- Decided before anything is written: a refusal leaves the sessions as they were.
  if per_user and count - #evict - leaving >= per_user then return -2, {}, {} end
  for _, old in ipairs(dropped) do drop_session(hk, old) end
  return 1, evict, sessions
end

-- Partial loss ---------------------------------------------------------------------
-- A key lost on its own (evicted under maxmemory, deleted by hand) leaves a
-- live connection half recorded. Each heartbeat audits a bounded slice of
-- its node's connections (`whole`); those found broken are repaired from
-- what the node knows of them (`repair`).

-- Users of a group beyond which its connection count is not recounted (the
-- recount reads every user's count: bounded, as every function must be).
local RECOUNT_LIMIT = 1000

-- Whether g's connection count and registry entry can be right: at least one
-- connection per user and per anonymous member, and listed while positive.
-- Remembered for the call: an audit asks about the same groups again and again.
local function group_sound(C, g)
  if C.sound == nil then C.sound = {} end
  if C.sound[g] == nil then
    local n = tonumber(redis.call('GET', k_gcount(C, g))) or 0
    local floor = redis.call('HLEN', k_group(C, g)) + redis.call('SCARD', k_ganon(C, g))
    C.sound[g] = n >= floor and (n <= 0 or redis.call('ZSCORE', k_registry(C), g) ~= false)
  end
  return C.sound[g]
end

-- Set g's connection count from its users' counts and anonymous members
-- (a lower bound past RECOUNT_LIMIT users), and its registry entry.
local function recount(C, g)
  local gk, nk = k_group(C, g), k_gcount(C, g)
  local users = redis.call('HLEN', gk)
  local n = redis.call('SCARD', k_ganon(C, g))
  if users <= RECOUNT_LIMIT then
    for _, v in ipairs(redis.call('HVALS', gk)) do n = n + (tonumber(v) or 0) end
  else
    n = math.max(n + users, tonumber(redis.call('GET', nk)) or 0)
  end
  if n > 0 then
    redis.call('SET', nk, n)
    redis.call('ZADD', k_registry(C), 0, g)
  else
    redis.call('DEL', nk)
    redis.call('ZREM', k_registry(C), g)
  end
end

-- Whether a live connection of `node` is whole: its record, its bucket entry
-- (under the node's bucket count), and its count in each of its groups.
-- A connection with neither record nor bucket entry was removed (evicted,
-- kicked: its node closes it), not lost: nothing to put back.
local function whole(C, node, seq, u)
  local cid = node .. '.' .. seq
  local hk = holder(C, u, cid)
  local rec = redis.call('HMGET', hk, cid, cid .. '|g')
  local b = bucket_of(seq)
  local listed = redis.call('HEXISTS', k_bucket(C, node, b), seq) == 1
  if not rec[1] then return not listed end
  if C.top == nil then C.top = tonumber(redis.call('HGET', k_node(C, node), 'b')) or 0 end
  if b >= C.top or not listed then return false end
  for _, g in ipairs(split(rec[2], ',')) do
    if not (counted(C, g, u, cid) and group_sound(C, g)) then return false end
  end
  return true
end

-- Put a recorded connection back where its record says it is: its bucket
-- and each group that lost it (a user's count there from their records).
local function mend(C, cid, u, hk)
  local node, seq = node_of(cid)
  local b = bucket_of(seq)
  redis.call('HSET', k_bucket(C, node, b), seq, u or '')
  place(C, node, b)
  local by
  for _, g in ipairs(split(redis.call('HGET', hk, cid .. '|g'), ',')) do
    if not counted(C, g, u, cid) then
      if u then
        if not by then by = records(redis.call('HGETALL', hk)) end
        local n = 0
        for _, r in pairs(by) do
          if r.g and string.find(',' .. r.g .. ',', ',' .. g .. ',', 1, true) then n = n + 1 end
        end
        redis.call('HSET', k_group(C, g), u, n)
      else
        redis.call('SADD', k_ganon(C, g), cid)
      end
    end
    recount(C, g)
  end
end

-- Functions ---------------------------------------------------------------------------

local function encode(x) return cjson.encode(x) end

-- connect: ARGV[5] cid, [6] user, [7] session, [8] groups (comma-separated),
-- [9] meta, [10] max sessions, [11] scope, [12] on_limit, [13] connected_at ms
-- ('' = now), [14] the node's channel prefix, [15] the channel part,
-- [16] max connections per user, [17] close code for the evicted, [18] '1'
-- on the node's first connect, [19] when the socket opened, ms ('' unknown).
-- Returns JSON [status, came_online, joined, evicted, connected_at ms,
-- sessions to evict, prefixes]; status 1 ok, 0 refused, -1 node counted
-- out, -2 too many connections of the user, -3 fenced by a logout.
local function connect(keys, args)
  local C = context(args)
  local cid, u, s = args[5], opt(args[6]), opt(args[7])
  local groups = split(args[8], ',')
  local max, scope, on_limit = tonumber(args[10]), args[11], args[12]
  local t = tonumber(args[13]) or math.floor(C.NOW * 1000 + 0.5)
  local node = (node_of(cid))
  if redis.call('HEXISTS', k_node(C, node), 'dead') == 1 then return encode({-1}) end
  local evict, sessions = {}, {}
  if u and fenced(C, u, s, tonumber(args[19])) then return encode({-3}) end
  -- A replayed connect (a retry after a timeout whose call had run) replaces
  -- the record it left, signed in or anonymous, so nothing is counted twice.
  if redis.call('HEXISTS', holder(C, u, cid), cid) == 1 then remove(C, u, cid, nil, nil) end
  if u then
    local hk = k_user(C, u)
    local status
    status, evict, sessions = admit(C, hk, cid, s, max, scope, on_limit, tonumber(args[16]))
    if status ~= 1 then return encode({status}) end
  end
  register_node(C, node, args[14])
  if args[18] == '1' then redis.call('HSET', k_node(C, node), 'live', 1) end
  redis.call('HINCRBY', k_node(C, node), 'w', 1)
  local came_online, joined = record(C, cid, u, s, b36(t), args[15], groups, opt(args[9]),
    max and scope == 'session')
  local evicted = {}
  for _, old in ipairs(evict) do
    local dep = remove(C, u, old, 'superseded', args[17])
    if dep then evicted[#evicted + 1] = dep end
  end
  return encode({1, came_online, joined, evicted, t, sessions, C.prefixes})
end

-- disconnect: ARGV[5] cid, [6] user, [7] its groups as its node knows them
-- (used only if its record was lost). Returns JSON [departure or false,
-- prefixes]; a departure's record is false when it was lost.
local function disconnect(keys, args)
  local C = context(args)
  redis.call('HINCRBY', k_node(C, (node_of(args[5]))), 'w', 1)
  return encode({remove(C, opt(args[6]), args[5], nil, nil, args[7] or '') or false, C.prefixes})
end

-- The context, connection id, user and record hash of a call about one
-- recorded connection (ARGV[5] cid, [6] user); nil when it is not recorded.
-- `counted`: the call is one of the node's own writes, counted (see beat) so
-- that a store that lost it (a failover to a replica that had not got it)
-- shows fewer. The c_* functions pass nothing: the node's key is in another
-- slot. On a cluster only the node's own slot counts its writes (c_enlist,
-- c_delist): a write lost on a user's or group's slot goes unnoticed.
local function recorded(args, counted)
  local C = context(args)
  local cid, u = args[5], opt(args[6])
  local hk = holder(C, u, cid)
  if redis.call('HEXISTS', hk, cid) == 0 then return nil end
  if counted then redis.call('HINCRBY', k_node(C, (node_of(cid))), 'w', 1) end
  return C, cid, u, hk
end

-- join: ARGV[5] cid, [6] user, [7] groups. Returns JSON list of groups the
-- user newly joined, or false when the connection is not recorded.
local function join(keys, args)
  local C, cid, u, hk = recorded(args, true)
  if not C then return encode(false) end
  local current = redis.call('HGET', hk, cid .. '|g')
  local have = {}
  for _, g in ipairs(split(current, ',')) do have[g] = true end
  local added, joined = {}, {}
  for _, g in ipairs(split(args[7], ',')) do
    if not have[g] then
      have[g] = true
      added[#added + 1] = g
      if group_add(C, g, u, cid) and not back_in_time(C, u, g) then joined[#joined + 1] = g end
    end
  end
  if #added > 0 then
    local more = table.concat(added, ',')
    redis.call('HSET', hk, cid .. '|g', current and (current .. ',' .. more) or more)
  end
  return encode(joined)
end

-- leave: ARGV[5] cid, [6] user, [7] groups. Returns JSON list of groups the
-- user is no longer in, or false when the connection is not recorded.
local function leave(keys, args)
  local C, cid, u, hk = recorded(args, true)
  if not C then return encode(false) end
  local going = {}
  for _, g in ipairs(split(args[7], ',')) do going[g] = true end
  local keep, left = {}, {}
  for _, g in ipairs(split(redis.call('HGET', hk, cid .. '|g'), ',')) do
    if going[g] then
      if group_remove(C, g, u, cid) then
        left[#left + 1] = g
        mark_absent(C, u, g)
      end
    else
      keep[#keep + 1] = g
    end
  end
  if #keep > 0 then
    redis.call('HSET', hk, cid .. '|g', table.concat(keep, ','))
  else
    redis.call('HDEL', hk, cid .. '|g')
  end
  return encode(left)
end

-- set_meta: ARGV[5] cid, [6] user, [7] meta ('' = none). Returns 1, or 0
-- when the connection is not recorded.
local function write_meta(C, cid, hk, meta)
  if not C then return 0 end
  if meta then
    redis.call('HSET', hk, cid .. '|m', meta)
  else
    redis.call('HDEL', hk, cid .. '|m')
  end
  return 1
end

local function set_meta(keys, args)
  local C, cid, _, hk = recorded(args, true)
  return write_meta(C, cid, hk, opt(args[7]))
end

-- beat: ARGV[5] node, [6] its channel prefix, [7] inbox batch, [8] reap
-- budget, [9] settle batch, [10] how many of its own writes (connects,
-- disconnects, joins, leaves, metadata of recorded connections) the node saw
-- answered: more than the store counted means Redis went back in time (a
-- restore from an older snapshot, a failover that lost the last writes),
-- [11] JSON list of [seq, user] of some of its live connections, to audit (a
-- bounded slice), [12] the last notice its previous reply carried ('' none:
-- see take_inbox). Keeps the node alive: one ZADD, however many connections it
-- holds. Returns JSON [state, closed, expired, settled, more, seconds until
-- another node's deadline (-1: none), prefixes, seqs of audited connections
-- found broken]; state 0 ok, 1 the node's records were lost (write them back),
-- 2 it was counted out.
-- Seconds until the earliest deadline of a node other than `node` (-1: none).
local function next_deadline(C, node)
  -- The two earliest deadlines (names and scores alternate): one may be ours.
  local first = redis.call('ZRANGE', k_nodes(C), 0, 1, 'WITHSCORES')
  for i = 1, #first, 2 do
    if first[i] ~= node then return math.max(0, tonumber(first[i + 1]) - C.NOW) end
  end
  return -1
end

-- What a beat first learns of its node: 2 counted out, 1 its records were
-- lost (its live flag, or writes it saw answered that the store lacks), else
-- 0. `prefix` is its channel prefix, `writes` the count it saw answered.
local function node_state(C, node, prefix, writes)
  local nk = k_node(C, node)
  if redis.call('HEXISTS', nk, 'dead') == 1 then return 2 end
  local state = 0
  redis.call('HSETNX', nk, 'c', prefix)
  if redis.call('HSETNX', nk, 'live', 1) == 1 then state = 1 end
  writes = tonumber(writes) or 0
  if (tonumber(redis.call('HGET', nk, 'w')) or 0) < writes then
    state = 1
    redis.call('HSET', nk, 'w', writes)
  end
  return state
end

-- The node's inbox: what the node's last reply carried, up to `ack` (the last
-- notice in it), goes; the next batch is read and stays until the next call
-- acknowledges it, so a reply lost on the way (a timeout) is read again. An
-- `ack` that occurs twice is found first: less goes, never more.
local function take_inbox(C, node, batch, ack)
  local inbox = k_inbox(C, node)
  if ack then
    local at = redis.call('LPOS', inbox, ack, 'MAXLEN', batch)
    if at then redis.call('LTRIM', inbox, at + 1, -1) end
  end
  return redis.call('LRANGE', inbox, 0, batch - 1)
end

local function beat(keys, args)
  local C = context(args)
  local node = args[5]
  local state = node_state(C, node, args[6], args[10])
  if state == 2 then return encode({2}) end
  redis.call('ZADD', k_nodes(C), C.NOW + C.TTL, node)
  local batch = tonumber(args[7])
  local closed = take_inbox(C, node, batch, opt(args[12]))
  local expired, reaping = reap(C, tonumber(args[8]))
  local settled, settling = settle(C, tonumber(args[9]))
  local next_check = next_deadline(C, node)
  local broken = {}
  for _, it in ipairs(cjson.decode(args[11] or '[]')) do
    if not whole(C, node, it[1], opt(it[2])) then broken[#broken + 1] = it[1] end
  end
  return encode({state, closed, expired, settled, reaping or settling or #closed >= batch,
    next_check, C.prefixes, broken})
end

-- Whether a connection written back (connected at `t` ms) fits its user's
-- limits; under close_oldest, newer wins: older connections are removed to
-- make room (a snapshot may hold a socket closed since).
local function room_for(C, hk, u, cid, s, t, max, scope, per_user, on_limit, code)
  local count = tonumber(redis.call('HGET', hk, '#')) or 0
  local ok = true
  if max and scope == 'session' then
    local sid = session_id(cid, s)
    ok = redis.call('HEXISTS', hk, 's|' .. sid) == 1
      or #split(redis.call('HGET', hk, 'S'), ' ') < max
  elseif max then
    ok = count < max
    if not ok and on_limit == 'close_oldest' then
      local by, order = records(redis.call('HGETALL', hk))
      local older = {}
      for _, oc in ipairs(order) do
        if time_of(by[oc].rec) < t then older[#older + 1] = oc end
      end
      table.sort(older, function(a, b) return time_of(by[a].rec) < time_of(by[b].rec) end)
      if #older >= count - max + 1 then
        for i = 1, count - max + 1 do remove(C, u, older[i], 'superseded', code) end
        count = max - 1
        ok = true
      end
    end
  end
  return ok and not (per_user and count >= per_user)
end

-- restore: ARGV[5] node, [6] channel prefix, [7] max sessions, [8] scope,
-- [9] max connections per user, [10] JSON list of [cid, user, session,
-- connected_at ms, groups, meta, channel part, opened ms ('' unknown)],
-- [11] on_limit, [12] the close code of the superseded. Writes back
-- connections the store lost, unless one would take its user past a limit
-- or a logout fenced it. Returns JSON [restored count, cids refused, cids
-- fenced].
local function restore(keys, args)
  local C = context(args)
  register_node(C, args[5], args[6])
  redis.call('HSET', k_node(C, args[5]), 'live', 1)
  local max, scope, per_user = tonumber(args[7]), args[8], tonumber(args[9])
  local restored, refused, gone = 0, {}, {}
  for _, it in ipairs(cjson.decode(args[10])) do
    local cid, u, s = it[1], opt(it[2]), opt(it[3])
    local hk = holder(C, u, cid)
    if u and redis.call('HEXISTS', hk, cid) == 0 and fenced(C, u, s, tonumber(it[8])) then
      gone[#gone + 1] = cid
    elseif redis.call('HEXISTS', hk, cid) == 0 then
      local ok = true
      if u then
        ok = room_for(C, hk, u, cid, s, tonumber(it[4]), max, scope, per_user, args[11], args[12])
      end
      if ok then
        record(C, cid, u, s, b36(tonumber(it[4])), it[7], split(it[5], ','), opt(it[6]),
          max and scope == 'session')
        restored = restored + 1
      else
        refused[#refused + 1] = cid
      end
    end
  end
  return encode({restored, refused, gone})
end

-- repair: the arguments of restore, for connections an audit found broken.
-- A lost record (its bucket entry says it was never removed) is written back
-- under the limits (its groups still count it, or are mended next); one
-- refused is counted out of its groups. Then its bucket entry and its groups
-- are mended. One removed meanwhile is left alone; one whose record was
-- lost after a logout fenced it is counted out. Returns JSON [repaired, cids
-- refused, cids fenced].
local function repair(keys, args)
  local C = context(args)
  local max, scope, per_user = tonumber(args[7]), args[8], tonumber(args[9])
  local repaired, refused, gone = 0, {}, {}
  for _, it in ipairs(cjson.decode(args[10])) do
    local cid, u, s = it[1], opt(it[2]), opt(it[3])
    local hk = holder(C, u, cid)
    local node, seq = node_of(cid)
    local ok = true
    if redis.call('HEXISTS', hk, cid) == 0
        and redis.call('HEXISTS', k_bucket(C, node, bucket_of(seq)), seq) == 0 then
      ok = false -- removed meanwhile (evicted, kicked), not lost: its node closes it
    elseif redis.call('HEXISTS', hk, cid) == 0 and u and fenced(C, u, s, tonumber(it[8])) then
      remove_lost(C, u, cid, it[5])
      gone[#gone + 1] = cid
      ok = false
    elseif redis.call('HEXISTS', hk, cid) == 0 then
      local t = tonumber(it[4])
      if u then ok = room_for(C, hk, u, cid, s, t, max, scope, per_user, args[11], args[12]) end
      if ok then
        write_record(C, cid, u, s, b36(t), it[7], split(it[5], ','), opt(it[6]),
          max and scope == 'session')
      else
        remove_lost(C, u, cid, it[5])
        refused[#refused + 1] = cid
      end
    end
    if ok then
      mend(C, cid, u, hk)
      repaired = repaired + 1
    end
  end
  return encode({repaired, refused, gone})
end

-- disconnect_user: ARGV[5] user, [6] session ('' = all), [7] why, [8] code,
-- [9] HSCAN cursor, [10] batch. Removes the user's connections found by one
-- HSCAN step. Returns JSON [next cursor, departures, prefixes].
local function disconnect_user(keys, args)
  local C = context(args)
  local u, session = args[5], opt(args[6])
  local hk = k_user(C, u)
  local scan = redis.call('HSCAN', hk, args[9], 'COUNT', tonumber(args[10]))
  local flat = scan[2]
  local deps = {}
  local by, order = records(flat)
  for _, cid in ipairs(order) do
    if not session or session_in(by[cid].rec) == session then
      local dep = remove(C, u, cid, args[7], args[8])
      if dep then deps[#deps + 1] = dep end
    end
  end
  return encode({scan[1], deps, C.prefixes})
end

-- fence: ARGV[5] user, [6] session ('' = the whole user, by time), [7] seconds.
local function fence(keys, args)
  local C = context(args)
  local fk = k_fence(C, args[5])
  if opt(args[6]) then
    redis.call('HSET', fk, args[6], 1)
  else
    redis.call('HSET', fk, '*', math.floor(C.NOW * 1000))
  end
  redis.call('EXPIRE', fk, tonumber(args[7]))
  return 1
end

-- reset: ARGV[5] node, [6] budget. Removes a node's own connections without
-- telling anyone (its process holds the truth and writes it back next), in
-- batches. Returns 1 when the node has none left.
local function reset_node(keys, args)
  local C = context(args)
  local node = args[5]
  local _, done = empty_node(C, node, tonumber(args[6]), {}, 0)
  if done then redis.call('HDEL', k_node(C, node), 'r') end
  return done and 1 or 0
end

-- reap: ARGV[5] budget. Returns JSON [departures, more, prefixes].
local function reap_now(keys, args)
  local C = context(args)
  local out, more = reap(C, tonumber(args[5]))
  return encode({out, more, C.prefixes})
end

-- settle: ARGV[5] batch. Returns JSON [pairs, more].
local function settle_now(keys, args)
  local C = context(args)
  local out, more = settle(C, tonumber(args[5]))
  return encode({out, more})
end

-- retire: ARGV[5] node. A node that stops with no connections left.
-- Returns 1 (forgotten), 0 (it has connections) or 2 (not known yet: call again).
local function retire(keys, args)
  local C = context(args)
  local node = args[5]
  local state = walk(C, node)
  if state == 'found' then return 0 end
  if state == 'more' then return 2 end
  redis.call('ZREM', k_nodes(C), node)
  redis.call('DEL', k_node(C, node), k_inbox(C, node), k_anon(C, node))
  return 1
end

-- user_connections: ARGV[5] user. Returns JSON [records, prefixes].
local function user_connections(keys, args)
  local C = context(args)
  local u = args[5]
  local by, order = records(redis.call('HGETALL', k_user(C, u)))
  local out = {}
  for _, cid in ipairs(order) do
    if alive(C, (node_of(cid))) then out[#out + 1] = record_reply(C, cid, u, by[cid]) end
  end
  return encode({out, C.prefixes})
end

-- group_connections: ARGV[5] group, [6] HSCAN cursor of its users, [7]
-- batch, [8] SSCAN cursor of its anonymous connections ('' = done).
-- Returns JSON [user cursor, anonymous cursor, records, prefixes].
local function group_connections(keys, args)
  local C = context(args)
  local g = args[5]
  local batch = tonumber(args[7])
  local out = {}
  local ucur, acur = '0', ''
  if args[6] ~= '' then
    local scan = redis.call('HSCAN', k_group(C, g), args[6], 'COUNT', batch)
    ucur = scan[1]
    for i = 1, #scan[2], 2 do
      local u = scan[2][i]
      local by, order = records(redis.call('HGETALL', k_user(C, u)))
      for _, cid in ipairs(order) do
        local r = by[cid]
        if string.find(',' .. (r.g or '') .. ',', ',' .. g .. ',', 1, true)
            and alive(C, (node_of(cid))) then
          out[#out + 1] = record_reply(C, cid, u, r)
        end
      end
    end
  end
  if args[8] ~= '' then
    local scan = redis.call('SSCAN', k_ganon(C, g), args[8], 'COUNT', batch)
    acur = scan[1]
    for _, cid in ipairs(scan[2]) do
      local hk = holder(C, nil, cid)
      local rec = redis.call('HMGET', hk, cid, cid .. '|g', cid .. '|m')
      if rec[1] and alive(C, (node_of(cid))) then
        out[#out + 1] = record_reply(C, cid, nil, {rec = rec[1], g = rec[2], m = rec[3]})
      end
    end
  end
  if ucur == '0' then ucur = '' end
  if acur == '0' then acur = '' end
  return encode({ucur, acur, out, C.prefixes})
end

-- groups: ARGV[5] exclusive lower bound ('' = from the start), [6] batch.
-- Returns JSON list of [group, connections].
local function groups_page(keys, args)
  local C = context(args)
  local from = args[5] == '' and '-' or ('(' .. args[5])
  local out = {}
  for _, g in ipairs(redis.call('ZRANGE', k_registry(C), from, '+', 'BYLEX', 'LIMIT', 0,
      tonumber(args[6]))) do
    out[#out + 1] = {g, tonumber(redis.call('GET', k_gcount(C, g))) or 0}
  end
  return encode(out)
end

-- Redis Cluster: one slot a call ----------------------------------------------------
--
-- On a cluster (REDIS_CLUSTER) the functions above, which write several
-- slots at once, are not used (unless the prefix is itself a hash tag, which
-- puts every key in one slot). The store runs these instead, each on the
-- slot of KEYS[1] alone, in this order, so that a caller that dies between
-- two steps leaves what the reaper or a retry completes:
--   connect:    c_enlist (node; concurrent connects of one node share a
--               call) [-> c_global 'N' on the node's first] -> c_admit (user)
--               -> c_group (each group) -> HEXISTS (user: still recorded?),
--               c_global ({~}: registry) and c_grace (the user's pending shard)
--   disconnect: c_group (each group the caller knows of) -> c_unrecord (user)
--               -> c_group (any it did not know of) -> c_global, c_grace; its
--               bucket entry goes with the node's next c_enlist, c_beat or
--               c_retire
--   join:       c_edit (user) -> c_group -> HEXISTS;  leave: c_group -> c_edit
--   set_meta:   c_meta (user, or the node's anonymous hash)
--   reap:       c_reap_take (node, a batch) -> HMGET (users) -> c_group
--               -> c_unrecord (users) -> c_delist (node), c_global, c_grace
--   disconnect_user: HSCAN + HMGET (user) -> c_group -> c_unrecord -> c_delist
--   evictions (inside c_admit, atomic with the limit; the evicted's groups
--               stay listed) -> c_group -> c_delist (node) and HDEL of those lists
--   heartbeat:  c_beat (node) -> c_tick ({~}) -> c_claim (every pending
--               shard) -> EXISTS/HEXISTS (still away?) -> a reap if one is due
-- A node's bucket is written before the record and cleared after it, so the
-- reaper always finds a record it must remove; c_group counts a connection
-- in or out only when P/g{g}/c (its user connections there) or P/g{g}/a
-- really changes, so a replayed step never counts twice.

local function k_gcids(C, g) return C.P .. '/g{' .. g .. '}/c' end

-- The user-slot half of remove(): the record, the count, the sessions.
-- Returns a departure (groups in [5], left {} for the caller), or nil.
local function unrecord(C, u, cid)
  local hk = holder(C, u, cid)
  local rec = redis.call('HMGET', hk, cid, cid .. '|g', cid .. '|m')
  if not rec[1] then
    -- An evicted connection's groups, left by c_admit until they counted it out.
    if rec[2] then redis.call('HDEL', hk, cid .. '|g') end
    return nil
  end
  redis.call('HDEL', hk, cid, cid .. '|g', cid .. '|m')
  local session = session_in(rec[1])
  local count = redis.call('HINCRBY', hk, '#', -1)
  if u then
    local sk = 's|' .. session_id(cid, session)
    if redis.call('HEXISTS', hk, sk) == 1 and redis.call('HINCRBY', hk, sk, -1) <= 0 then
      drop_session(hk, session_id(cid, session))
    end
  end
  if count <= 0 then redis.call('DEL', hk) end
  return {cid, u or false, rec[1], session or false, rec[2] or false, rec[3] or false, {},
    u ~= nil and count <= 0}
end

-- The node's own disconnects since its last call (ARGV from `from` on):
-- their bucket entries go, and they count as the node's writes.
local function drop_own(C, node, args, from)
  for i = from, #args do redis.call('HDEL', k_bucket(C, node, bucket_of(args[i])), args[i]) end
  if #args >= from then redis.call('HINCRBY', k_node(C, node), 'w', #args - from + 1) end
end

-- c_enlist (node): ARGV[5] the node's channel prefix, [6] '1' on its first
-- connect, [7] how many connections n, then n pairs cid, user ('' anonymous)
-- (all of the node), then seqs of its own disconnects. Puts them in the
-- node's buckets. Returns 1, or -1: counted out.
local function c_enlist(keys, args)
  local C = context(args)
  local n = tonumber(args[7])
  local node = (node_of(args[8]))
  local nk = k_node(C, node)
  if redis.call('HEXISTS', nk, 'dead') == 1 then return -1 end
  drop_own(C, node, args, 8 + 2 * n)
  redis.call('HSETNX', nk, 'c', args[5])
  if args[6] == '1' then redis.call('HSET', nk, 'live', 1) end
  redis.call('HINCRBY', nk, 'w', n)
  for i = 8, 7 + 2 * n, 2 do
    local _, seq = node_of(args[i])
    local b = bucket_of(seq)
    redis.call('HSET', k_bucket(C, node, b), seq, args[i + 1])
    place(C, node, b)
  end
  return 1
end

-- c_delist (node): ARGV[5] node, [6] '1' when the node's own write (counts
-- toward w), [7] why ('' none), [8] close code, [9..] seqs. Drops the seqs
-- from the buckets; with a why, tells the node's heartbeat to close them.
local function c_delist(keys, args)
  local C = context(args)
  local node = args[5]
  if args[6] == '1' then redis.call('HINCRBY', k_node(C, node), 'w', 1) end
  for i = 9, #args do
    local seq = args[i]
    redis.call('HDEL', k_bucket(C, node, bucket_of(seq)), seq)
    if args[7] ~= '' then redis.call('RPUSH', k_inbox(C, node), seq .. '\t' .. args[7] .. '\t' .. args[8]) end
  end
  if args[7] ~= '' and #args >= 9 then redis.call('EXPIRE', k_inbox(C, node), C.KEEP) end
  return 1
end

-- c_admit (user, or the node's anonymous hash): ARGV as connect's [5..17]
-- without the prefix ([14] is the channel part), [18] when the socket opened.
-- Applies the session policy and writes the record: the limit is as atomic
-- as on one Redis. Returns JSON [status, first of the user, evicted
-- departures, connected_at ms, sessions to evict, groups of a record this
-- cid replaced].
local function c_admit(keys, args)
  local C = context(args)
  local cid, u, s = args[5], opt(args[6]), opt(args[7])
  local max, scope = tonumber(args[10]), args[11]
  local t = tonumber(args[13]) or math.floor(C.NOW * 1000 + 0.5)
  local evict, sessions, replaced = {}, {}, {}
  if u then
    if fenced(C, u, s, tonumber(args[18])) then return encode({-3}) end
    local hk = k_user(C, u)
    local old = redis.call('HEXISTS', hk, cid) == 1 and unrecord(C, u, cid)
    if old then replaced = split(old[5] or '', ',') end
    local status
    status, evict, sessions = admit(C, hk, cid, s, max, scope, args[12], tonumber(args[16]))
    if status ~= 1 then return encode({status}) end
  end
  local hk = holder(C, u, cid)
  local fields = {cid, s and (b36(t) .. args[14] .. '\t' .. s) or (b36(t) .. args[14])}
  if args[8] ~= '' then fields[#fields + 1] = cid .. '|g'; fields[#fields + 1] = args[8] end
  if opt(args[9]) then fields[#fields + 1] = cid .. '|m'; fields[#fields + 1] = args[9] end
  redis.call('HSET', hk, unpack(fields))
  local count = redis.call('HINCRBY', hk, '#', 1)
  if u and max and scope == 'session' then
    local sid = session_id(cid, s)
    if redis.call('HINCRBY', hk, 's|' .. sid, 1) == 1 then
      local order = redis.call('HGET', hk, 'S')
      redis.call('HSET', hk, 'S', order and (order .. ' ' .. sid) or sid)
    end
  end
  local evicted = {}
  for _, old in ipairs(evict) do
    local dep = unrecord(C, u, old)
    if dep then
      evicted[#evicted + 1] = dep
      -- Its groups stay listed (no record beside them) until the caller has
      -- counted it out of them: a caller that dies first leaves them for the
      -- reaper or the evicted connection's own disconnect.
      if dep[5] then redis.call('HSET', hk, old .. '|g', dep[5]) end
    end
  end
  return encode({1, u ~= nil and count == 1, evicted, t, sessions, replaced})
end

-- c_unrecord (user, or a node's anonymous hash): ARGV[5] user, [6..] cids.
-- Returns JSON list of departures (false for a cid not recorded).
local function c_unrecord(keys, args)
  local C = context(args)
  local u = opt(args[5])
  local out = {}
  for i = 6, #args do out[#out + 1] = unrecord(C, u, args[i]) or false end
  return encode(out)
end

-- c_edit (user): ARGV[5] cid, [6] user, [7] '+' or '-', [8] groups. Adds
-- groups to (or drops them from) the record's list. Returns JSON list of the
-- groups really added or dropped, or false when the cid is not recorded.
-- c_meta (user, or the node's anonymous hash): set_meta in one slot, not
-- counted as the node's write (see `recorded`).
local function c_meta(keys, args)
  local C, cid, _, hk = recorded(args)
  return write_meta(C, cid, hk, opt(args[7]))
end

local function c_edit(keys, args)
  local C, cid, u, hk = recorded(args)
  if not C then return encode(false) end
  local have, order = {}, split(redis.call('HGET', hk, cid .. '|g'), ',')
  for _, g in ipairs(order) do have[g] = true end
  local changed = {}
  for _, g in ipairs(split(args[8], ',')) do
    if (args[7] == '+') ~= (have[g] == true) then
      have[g] = args[7] == '+'
      changed[#changed + 1] = g
      if args[7] == '+' then order[#order + 1] = g end
    end
  end
  local keep = {}
  for _, g in ipairs(order) do if have[g] then keep[#keep + 1] = g end end
  if #keep > 0 then
    redis.call('HSET', hk, cid .. '|g', table.concat(keep, ','))
  else
    redis.call('HDEL', hk, cid .. '|g')
  end
  return encode(changed)
end

-- c_group (group): ARGV[5] group, then triples op ('+' or '-'), cid, user.
-- Returns per triple 0 (nothing changed: a replay) or 1 + 2 (the user's
-- first or last connection there) + 4 (the group's first or last).
local function c_group(keys, args)
  local C = context(args)
  local g = args[5]
  local out = {}
  for i = 6, #args, 3 do
    local add, cid, u = args[i] == '+', args[i + 1], opt(args[i + 2])
    local set = u and k_gcids(C, g) or k_ganon(C, g)
    local flags = 0
    if add and redis.call('SADD', set, cid) == 1 then
      flags = 1
      if redis.call('INCR', k_gcount(C, g)) == 1 then flags = flags + 4 end
      if u and redis.call('HINCRBY', k_group(C, g), u, 1) == 1 then flags = flags + 2 end
    elseif not add and redis.call('SREM', set, cid) == 1 then
      flags = 1
      local nk = k_gcount(C, g)
      if redis.call('DECR', nk) <= 0 then redis.call('DEL', nk); flags = flags + 4 end
      if u then
        local gk = k_group(C, g)
        if redis.call('HINCRBY', gk, u, -1) <= 0 then redis.call('HDEL', gk, u); flags = flags + 2 end
      end
    end
    out[#out + 1] = flags
  end
  -- When this slot saw it all: orders registry changes (see c_global).
  out[#out + 1] = string.format('%.6f', C.NOW)
  return out
end

-- c_global ({~}): ARGV[5..] triples op, a, b: 'N' node (list it, if not
-- yet), 'X' node (unlist it), 'R+'/'R-' group, when its slot saw it fill or
-- empty: in or out of the registry.
-- Returns one integer a triple.
local function c_global(keys, args)
  local C = context(args)
  local out = {}
  for i = 5, #args, 3 do
    local op, a, b = args[i], args[i + 1], opt(args[i + 2])
    local r = 0
    if op == 'N' then
      r = redis.call('ZADD', k_nodes(C), 'NX', C.NOW + C.TTL, a)
    elseif op == 'X' then
      r = redis.call('ZREM', k_nodes(C), a)
    elseif op == 'R+' or op == 'R-' then
      -- Applied only if newer than the last change applied to the group: a
      -- process's "emptied" that arrives after another's later "filled"
      -- must not drop the group. A group's time is kept while it is listed.
      local kv = k_registry(C) .. 'v'
      local seen = tonumber(redis.call('HGET', kv, a))
      if not seen or not tonumber(b) or tonumber(b) > seen then
        if op == 'R+' then
          r = redis.call('ZADD', k_registry(C), 0, a)
          redis.call('HSET', kv, a, b)
        else
          r = redis.call('ZREM', k_registry(C), a)
          redis.call('HDEL', kv, a)
        end
      end
    end
    out[#out + 1] = r
  end
  return out
end

-- c_grace (a pending shard, KEYS[1]): ARGV[5..] triples op, user, group
-- ('' the user): 'B' back within the grace (1) or not (0), 'A' absent from
-- now. Returns one integer a triple.
local function c_grace(keys, args)
  local C = context(args)
  C.PENDING = keys[1]
  local out = {}
  for i = 5, #args, 3 do
    local u, g = args[i + 1], opt(args[i + 2])
    if args[i] == 'B' then
      out[#out + 1] = back_in_time(C, u, g) and 1 or 0
    else
      mark_absent(C, u, g)
      out[#out + 1] = 0
    end
  end
  return out
end

-- c_claim (a pending shard, KEYS[1]): ARGV[5] batch. Claims the shard's due
-- departures. Returns JSON [items, more].
local function c_claim(keys, args)
  local C = context(args)
  local limit = tonumber(args[5])
  local due = redis.call('ZRANGEBYSCORE', keys[1], '-inf', string.format('%.6f', C.NOW),
    'LIMIT', 0, limit)
  if #due > 0 then redis.call('ZREM', keys[1], unpack(due)) end
  return encode({due, #due >= limit})
end

-- c_beat (node): ARGV[5] node, [6] channel prefix, [7] inbox batch, [8] the
-- node's writes (see beat), [9] the last notice its previous reply carried
-- ('' none), [10..] seqs of its own disconnects. Returns JSON [state, closed,
-- more]; state as beat's.
local function c_beat(keys, args)
  local C = context(args)
  local node = args[5]
  local state = node_state(C, node, args[6], args[8])
  if state == 2 then return encode({2}) end
  drop_own(C, node, args, 10)
  local batch = tonumber(args[7])
  local closed = take_inbox(C, node, batch, opt(args[9]))
  return encode({state, closed, #closed >= batch})
end

-- c_tick ({~}): ARGV[5] node ('' none: only look). Keeps the node listed.
-- Returns JSON [seconds until another node's deadline (-1 none), a dead node
-- or false].
local function c_tick(keys, args)
  local C = context(args)
  local node = args[5]
  if node ~= '' then redis.call('ZADD', k_nodes(C), C.NOW + C.TTL, node) end
  local next_check = next_deadline(C, node)
  local dead = redis.call('ZRANGEBYSCORE', k_nodes(C), '-inf', '(' .. string.format('%.6f', C.NOW),
    'LIMIT', 0, 1)
  return encode({next_check, dead[1] or false})
end

-- c_alive ({~}, read-only): ARGV[5..] nodes. Returns 1 or 0 for each: beating.
local function c_alive(keys, args)
  local C = context(args)
  local out = {}
  for i = 5, #args do out[#out + 1] = alive(C, args[i]) and 1 or 0 end
  return out
end

-- c_reap_take (node): ARGV[5] node, [6] batch, [7] '1' to mark it counted
-- out (a reaper) or '' (the node resetting itself). Returns JSON [flat
-- seq, user pairs of one bucket, done]; done: nothing left, the node's keys
-- are gone but its marker (the caller unlists it with c_global 'X').
local function c_reap_take(keys, args)
  local C = context(args)
  local node = args[5]
  local nk = k_node(C, node)
  if args[7] == '1' then redis.call('HSETNX', nk, 'dead', string.format('%.3f', C.NOW)) end
  local state = walk(C, node)
  if state == 'more' then return encode({{}, false}) end
  if state == 'found' then
    local bk = k_bucket(C, node, tonumber(redis.call('HGET', nk, 'r')))
    -- A bucket in the large encoding may answer a page with nothing in it.
    local cursor, items = '0', {}
    repeat
      local scan = redis.call('HSCAN', bk, cursor, 'COUNT', tonumber(args[6]))
      cursor, items = scan[1], scan[2]
    until #items > 0 or cursor == '0'
    return encode({items, false})
  end
  if args[7] == '1' then
    redis.call('DEL', k_anon(C, node), k_inbox(C, node))
    redis.call('HDEL', nk, 'b', 'r')
    redis.call('EXPIRE', nk, math.max(C.KEEP, TOMBSTONE))
  else
    redis.call('HDEL', nk, 'r')
  end
  return encode({{}, true})
end

-- c_retire (node): ARGV[5] node, [6..] seqs of its own disconnects. Forgets
-- a node with no connection left (the caller unlists it). Returns 1, 0 when
-- it still has some, or 2 when that is not known yet (call again).
local function c_retire(keys, args)
  local C = context(args)
  local node = args[5]
  drop_own(C, node, args, 6)
  local state = walk(C, node)
  if state == 'found' then return 0 end
  if state == 'more' then return 2 end
  redis.call('DEL', k_node(C, node), k_inbox(C, node), k_anon(C, node))
  return 1
end

local function register(name, fn, read_only)
  local flags = {}
  if read_only then flags = {'no-writes'} end
  redis.register_function{function_name = LIB .. '_' .. name, callback = fn, flags = flags}
end

register('connect', connect)
register('disconnect', disconnect)
register('join', join)
register('leave', leave)
register('set_meta', set_meta)
register('beat', beat)
register('restore', restore)
register('repair', repair)
register('disconnect_user', disconnect_user)
register('reap', reap_now)
register('reset', reset_node)
register('fence', fence)
register('settle', settle_now)
register('retire', retire)
register('user_connections', user_connections, true)
register('group_connections', group_connections, true)
register('groups', groups_page, true)
register('c_enlist', c_enlist)
register('c_delist', c_delist)
register('c_admit', c_admit)
register('c_unrecord', c_unrecord)
register('c_edit', c_edit)
register('c_meta', c_meta)
register('c_group', c_group)
register('c_global', c_global)
register('c_beat', c_beat)
register('c_tick', c_tick)
register('c_alive', c_alive, true)
register('c_grace', c_grace)
register('c_claim', c_claim)
register('c_reap_take', c_reap_take)
register('c_retire', c_retire)
