-- Count 404/405 probes per host key in a 60 s window of 5 s buckets, atomically: the algorithm
-- of otel_secaudit/detection/scans.py (ScanCounter), shared by every instance.
--
-- KEYS[1] = P .. 'blocks' (names the shard's slot; P = the shard's prefix, a hash tag).
-- ARGV[1..4] = threshold, blocking (0|1: blocks are on), max_keys (this shard's), P;
-- then 5 per probe: key, blockable (0|1), trace_id, at, path.
--
-- Layout: P sc:<key> hash bucket -> count; P sp:<key> list of up to 10 distinct paths;
-- P st:<key> list of the last 5 trace IDs; P ss:<key> signalled-until (observe only);
-- P seen:scan sorted set key -> last seen (the cap). Everything expires after the window.
-- Returns one array per crossing: {key, count, at, blockable (0|1), #paths, path..., trace...}.
local threshold = tonumber(ARGV[1])
local blocking = ARGV[2] == '1'
local max_keys = tonumber(ARGV[3])
local prefix = ARGV[4]
local window, bucket_s, max_paths, max_traces = 60, 5, 10, 5
local window_ms = 65000
local out = {}
local seen = {}
local latest = 0

for i = 5, #ARGV, 5 do
  local key, blockable, trace, at_s, path = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local at = tonumber(at_s)
  local bucket = math.floor(at / bucket_s)
  local ckey, pkey, tkey = prefix .. 'sc:' .. key, prefix .. 'sp:' .. key, prefix .. 'st:' .. key
  local fields = redis.call('HGETALL', ckey)
  local total, stale = 0, {}
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) <= bucket - window / bucket_s then
      stale[#stale + 1] = fields[j]
    else
      total = total + tonumber(fields[j + 1])
    end
  end
  if #stale > 0 then redis.call('HDEL', ckey, unpack(stale)) end
  if total == 0 then redis.call('DEL', pkey, tkey) end  -- an idle key starts over
  redis.call('HINCRBY', ckey, bucket, 1)
  total = total + 1
  local paths = redis.call('LRANGE', pkey, 0, -1)
  if path ~= '' and #paths < max_paths then
    local known = false
    for _, p in ipairs(paths) do if p == path then known = true end end
    if not known then
      redis.call('RPUSH', pkey, path)
      paths[#paths + 1] = path
    end
  end
  if trace ~= '' then
    redis.call('RPUSH', tkey, trace)
    redis.call('LTRIM', tkey, -max_traces, -1)
  end
  for _, k in ipairs({ckey, pkey, tkey}) do redis.call('PEXPIRE', k, window_ms) end
  seen[#seen + 1] = at_s
  seen[#seen + 1] = key
  if at > latest then latest = at end
  if total >= threshold then
    local blocks = blocking and blockable == '1'
    local skey = prefix .. 'ss:' .. key
    if blocks or at >= tonumber(redis.call('GET', skey) or '0') then
      local row = {key, total, at_s, blocks and '1' or '0', #paths}
      for _, p in ipairs(paths) do row[#row + 1] = p end
      for _, t in ipairs(redis.call('LRANGE', tkey, 0, -1)) do row[#row + 1] = t end
      out[#out + 1] = row
      redis.call('DEL', ckey, pkey, tkey)  -- the count restarts
      if not blocks then
        redis.call('SET', skey, string.format('%.17g', at + window), 'PX', window_ms)
      end
    end
  end
end

-- The key cap: keys not seen for a window are gone (their state expired); beyond max_keys the
-- least recently seen are dropped with their state.
if #seen > 0 then
  local zkey = prefix .. 'seen:scan'
  for j = 1, #seen, 4000 do
    redis.call('ZADD', zkey, unpack(seen, j, math.min(j + 3999, #seen)))
  end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. string.format('%.17g', latest - window))
  local excess = redis.call('ZCARD', zkey) - max_keys
  if excess > 0 then
    local victims = redis.call('ZPOPMIN', zkey, math.min(excess, 1000 + #seen))
    for j = 1, #victims, 2 do  -- member, score, member, score...
      local victim = victims[j]
      redis.call('DEL', prefix .. 'sc:' .. victim, prefix .. 'sp:' .. victim,
        prefix .. 'st:' .. victim, prefix .. 'ss:' .. victim)
    end
  end
  redis.call('PEXPIRE', zkey, window_ms)
end
return out
