-- Judge and remember successful logins' devices and networks per user key, atomically: the
-- algorithm of otel_secaudit/detection/devices.py (DeviceHistory), shared by every instance.
--
-- KEYS[1] = P .. 'blocks' (names the shard's slot; P = the shard's prefix, a hash tag).
-- ARGV[1..4] = period_s, max_remembered, max_keys (this shard's), P;
-- then 4 per login: user key, device ('' = unknown), network ('' = unknown), at.
--
-- Layout: P d:<user> hash 'd:'..device / 'n:'..network -> last seen (at most max_remembered
-- of each); P seen:device sorted set user -> last login (the cap). A user's hash expires one
-- period after its last login. Returns one reason per login ('' = nothing new).
local period = tonumber(ARGV[1])
local remembered = tonumber(ARGV[2])
local max_keys = tonumber(ARGV[3])
local prefix = ARGV[4]
local period_ms = math.ceil(period * 1000)
local out = {}
local seen = {}
local latest = 0

-- One dimension ('d:' or 'n:'): new when the user has history in it and not this value;
-- then remember the value and drop the least recently seen beyond `remembered`.
local function judge(hkey, known, kind, value, at, at_s)
  if value == '' then return false end
  local field = kind .. value
  local count, previous = 0, nil
  for f, _ in pairs(known) do
    if string.sub(f, 1, 2) == kind then count = count + 1 end
  end
  previous = known[field]
  local new = count > 0 and previous == nil
  if previous == nil or previous < at then
    redis.call('HSET', hkey, field, at_s)
    known[field] = at
  end
  if previous == nil and count + 1 > remembered then
    local oldest, oldest_at = nil, nil
    for f, t in pairs(known) do
      if string.sub(f, 1, 2) == kind and (oldest_at == nil or t < oldest_at) then
        oldest, oldest_at = f, t
      end
    end
    redis.call('HDEL', hkey, oldest)
    known[oldest] = nil
  end
  return new
end

for i = 5, #ARGV, 4 do
  local user, device, network, at_s = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local at = tonumber(at_s)
  local hkey = prefix .. 'd:' .. user
  local fields = redis.call('HGETALL', hkey)
  local known, stale = {}, {}
  for j = 1, #fields, 2 do
    local t = tonumber(fields[j + 1])
    if t <= at - period then stale[#stale + 1] = fields[j] else known[fields[j]] = t end
  end
  if #stale > 0 then redis.call('HDEL', hkey, unpack(stale)) end
  local new_device = judge(hkey, known, 'd:', device, at, at_s)
  local new_network = judge(hkey, known, 'n:', network, at, at_s)
  if new_device and new_network then
    out[#out + 1] = 'new_device_and_network'
  elseif new_device then
    out[#out + 1] = 'new_device'
  elseif new_network then
    out[#out + 1] = 'new_network'
  else
    out[#out + 1] = ''
  end
  if next(known) ~= nil then redis.call('PEXPIRE', hkey, period_ms) end
  seen[#seen + 1] = at_s
  seen[#seen + 1] = user
  if at > latest then latest = at end
end

if #seen > 0 then
  local zkey = prefix .. 'seen:device'
  for j = 1, #seen, 4000 do
    redis.call('ZADD', zkey, unpack(seen, j, math.min(j + 3999, #seen)))
  end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. string.format('%.17g', latest - period))
  local excess = redis.call('ZCARD', zkey) - max_keys
  if excess > 0 then
    local victims = redis.call('ZPOPMIN', zkey, math.min(excess, 1000 + #seen))
    for j = 1, #victims, 2 do redis.call('DEL', prefix .. 'd:' .. victims[j]) end
  end
  redis.call('PEXPIRE', zkey, period_ms)
end
return out
