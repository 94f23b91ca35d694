-- The right to write a blocked key's request.blocked record, once per key per interval across
-- every instance (at most once per key per 60 s; with a shared store across all instances),
-- and the count of refusals it carries (security.block.count).
--
-- KEYS[1] = P .. 'blocks' (P = the shard's prefix; every key below is in KEYS[1]'s slot).
-- ARGV[1] = P, ARGV[2] = interval (s), ARGV[3] = now (the caller's clock, never the server's),
-- then pairs: key, refusals this instance counted for it and did not record.
--
-- For each key: the refusals are added to P rc:<key> (what every instance refused since the
-- key's last record); if no instance holds P rl:<key> (held-until, in the caller's time),
-- this caller takes it until now + interval and gets the whole count back (the count
-- restarts). Returns the taken keys and their counts, flat.
local prefix = ARGV[1]
local interval = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local keep_ms = math.ceil(interval * 2000)
local out = {}
for i = 4, #ARGV - 1, 2 do
  local key, refused = ARGV[i], tonumber(ARGV[i + 1])
  local ckey, lkey = prefix .. 'rc:' .. key, prefix .. 'rl:' .. key
  local total = redis.call('INCRBY', ckey, refused)
  if tonumber(redis.call('GET', lkey) or '0') <= now then
    redis.call('SET', lkey, string.format('%.17g', now + interval), 'PX', keep_ms)
    redis.call('DEL', ckey)
    out[#out + 1] = key
    out[#out + 1] = total
  else
    redis.call('PEXPIRE', ckey, keep_ms)
  end
end
return out
