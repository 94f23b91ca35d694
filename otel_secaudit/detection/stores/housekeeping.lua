-- End the blocks whose time has come, each exactly once across all instances, and list the
-- active ones (every instance enforces them).
-- KEYS[1] = the blocks sorted set (key -> blocked-until); ARGV[1] = now, ARGV[2] = limit of
-- active blocks returned. Returns {expired key/until pairs (flat), active key/until pairs}.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES')
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
local active = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
return {expired, active}
