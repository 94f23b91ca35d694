-- Release one block early (otel-secaudit blocks release), atomically.
--
-- KEYS[1] = the blocks sorted set (key -> blocked-until) of the key's shard.
-- ARGV[1] = the host key, ARGV[2] = now, ARGV[3] = '1' to forget the repeat-offender history,
-- ARGV[4] = the prefix P of the shard's keys, ARGV[5] = the window in milliseconds.
--
-- The key leaves the blocks set, so every instance drops the block at its next refresh; its
-- window (P w:host:<key>) and signal marker are deleted, so its count restarts; its block
-- record (P b:<key>) says the block ended now (violations from now on count) and keeps its
-- offences one window, unless ARGV[3] = '1' (deleted). Returns {until ('0': none was
-- running), offences}.
local key, now = ARGV[1], tonumber(ARGV[2])
local prefix = ARGV[4]
local ends = tonumber(redis.call('ZSCORE', KEYS[1], key) or '0')
redis.call('ZREM', KEYS[1], key)
redis.call('DEL', prefix .. 'w:host:' .. key, prefix .. 's:host:' .. key)
local bkey = prefix .. 'b:' .. key
local offences = redis.call('HGET', bkey, 'offences') or '0'
if ARGV[3] == '1' then
  redis.call('DEL', bkey)
elseif ends > now then
  redis.call('HSET', bkey, 'until', ARGV[2])
  redis.call('PEXPIRE', bkey, tonumber(ARGV[5]))
end
if ends <= now then
  ends = 0
end
return {string.format('%.17g', ends), offences}
