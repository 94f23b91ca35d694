-- Count a batch of violations, atomically: the algorithm of otel_secaudit/detection/window.py.
--
-- One call counts the hits of one shard (see stores/redis.py: a key's shard is crc32(key) mod
-- the number of shards, one shard without a cluster).
-- KEYS[1] = P .. 'blocks' (P = the shard's prefix, which carries a Redis Cluster hash tag, so
-- every key built from it below lives in KEYS[1]'s slot).
-- ARGV[1..7] = window_s, host_threshold, user_threshold, block_s, block_max_s, max_keys (the
-- shard's share of the per-scope cap), P;
-- then one packed string per hit: scope TAB blockable(0|1) TAB name TAB trace_id TAB at TAB key
-- (the key last: it may contain anything).
--
-- Layout: P w:<scope>:<key> list of "at|name|trace", the last `threshold`; P s:<scope>:<key>
-- signalled-until (observe-only keys); P b:<key> hash {until, offences} of a blockable host
-- key's last block; P blocks sorted set key -> blocked-until; P seen:<scope> sorted set
-- key -> last seen, trimmed to one window and to max_keys (least recently seen dropped with
-- their windows). Everything expires one window after it stops mattering. Time is the
-- caller's clock, never the server's.
--
-- Returns one array per crossing: {scope, key, at, block_seconds ('0' = no block),
-- previous_until ('0' = none: the end of the key's previous block when it was still in the
-- blocks set, i.e. its end not yet reported; the crossing reports it, exactly once), entry...}.
local window = tonumber(ARGV[1])
local thresholds = {host = tonumber(ARGV[2]), user = tonumber(ARGV[3])}
local block_s = tonumber(ARGV[4])
local block_max = math.max(tonumber(ARGV[5]), block_s)
local max_keys = tonumber(ARGV[6])
local prefix = ARGV[7]
local blocks_key = KEYS[1]
local window_ms = math.ceil(window * 1000)
local packed = '^(%a+)\t([01])\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$'
local out = {}
local latest = {}
local seen_members = {}  -- scope -> {score, member, ...}: one ZADD per scope and batch

local function evidence(row, wkey)
  for _, entry in ipairs(redis.call('LRANGE', wkey, 0, -1)) do
    row[#row + 1] = entry
  end
  return row
end

local function block(key, wkey, at, at_s, offences)
  local seconds = math.min(block_s * 2 ^ math.min(offences, 64), block_max)
  local previous = redis.call('ZSCORE', blocks_key, key) or '0'
  local row = evidence({'host', key, at_s, string.format('%.17g', seconds), previous}, wkey)
  redis.call('DEL', wkey)  -- the count restarts when the block ends
  local bkey = prefix .. 'b:' .. key
  redis.call('HSET', bkey, 'until', string.format('%.17g', at + seconds), 'offences', offences + 1)
  redis.call('PEXPIRE', bkey, math.ceil((seconds + window) * 1000))
  redis.call('ZADD', blocks_key, at + seconds, key)
  return row
end

for i = 8, #ARGV do
  local scope, blockable, name, trace, at_s, key = string.match(ARGV[i], packed)
  local at = tonumber(at_s)
  local threshold = thresholds[scope]
  local blocking = blockable == '1' and block_s > 0
  local since, offences = 0, 0
  if blocking then
    local last = redis.call('HMGET', prefix .. 'b:' .. key, 'until', 'offences')
    since, offences = tonumber(last[1] or '0'), tonumber(last[2] or '0')
  end
  local members = seen_members[scope]
  if members == nil then
    members = {}
    seen_members[scope] = members
  end
  members[#members + 1] = at_s
  members[#members + 1] = key
  if latest[scope] == nil or at > latest[scope] then
    latest[scope] = at
  end
  local wkey = prefix .. 'w:' .. scope .. ':' .. key
  local length = 0
  if at >= since then
    length = redis.call('RPUSH', wkey, at_s .. '|' .. name .. '|' .. trace)
    if length > threshold then
      redis.call('LTRIM', wkey, -threshold, -1)
      length = threshold
    end
    redis.call('PEXPIRE', wkey, window_ms)
  end
  if length == threshold then
    local oldest = tonumber(string.match(redis.call('LINDEX', wkey, 0), '^([^|]*)'))
    if oldest > at - window and oldest >= since then
      if blocking then
        out[#out + 1] = block(key, wkey, at, at_s, offences)
      else
        local skey = prefix .. 's:' .. scope .. ':' .. key
        if at >= tonumber(redis.call('GET', skey) or '0') then
          redis.call('SET', skey, string.format('%.17g', at + window), 'PX', window_ms)
          out[#out + 1] = evidence({scope, key, at_s, '0', '0'}, wkey)
        end
      end
    end
  end
end

-- The key cap, in the same round trip: forget keys not seen for a window (their windows have
-- expired), then the least recently seen beyond max_keys, with their state. At most 1,000 more
-- evictions than this batch added keys, so a lowered OTEL_SECAUDIT_MAX_KEYS is reached over a
-- few batches instead of one long script that would stall the server.
local budget = #ARGV - 7 + 1000
for scope, at in pairs(latest) do
  local seen = prefix .. 'seen:' .. scope
  local members = seen_members[scope]
  for j = 1, #members, 4000 do  -- unpack() has a stack limit: at most 2,000 members a call
    redis.call('ZADD', seen, unpack(members, j, math.min(j + 3999, #members)))
  end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%.17g', at - window))
  local excess = math.min(redis.call('ZCARD', seen) - max_keys, budget)
  if excess > 0 then
    local victims = redis.call('ZPOPMIN', seen, excess)
    local doomed = {}
    for j = 1, #victims, 2 do
      doomed[#doomed + 1] = prefix .. 'w:' .. scope .. ':' .. victims[j]
      doomed[#doomed + 1] = prefix .. 's:' .. scope .. ':' .. victims[j]
    end
    for j = 1, #doomed, 4000 do
      redis.call('DEL', unpack(doomed, j, math.min(j + 3999, #doomed)))
    end
  end
  redis.call('PEXPIRE', seen, window_ms)
end
return out
