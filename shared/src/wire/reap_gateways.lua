-- Removes the room memberships of gateways that stopped heartbeating (or of one named gateway,
-- on its clean shutdown or restart). Contract v1; documented in docs/redis-keys.md.
--
-- KEYS[1]  <prefix>:gateways   sorted set {gateway id: heartbeat expiry, unix ms}
-- ARGV[1]  now (unix ms): gateways whose expiry is at or before it are dead
-- ARGV[2]  the key prefix
-- ARGV[3]  optional: a gateway id to remove whatever its expiry ('' for none)
-- ARGV[4]  optional: ms to live for the :meta of a topic left held by nobody (see topic_leave.lua)
--
-- Returns the number of gateways removed. The per-gateway and per-topic keys are derived here
-- because they are only known after reading the sets; on Redis Cluster this script needs the
-- cross-slot work split up (a later issue).
local ids
if ARGV[3] and ARGV[3] ~= '' then
  ids = {ARGV[3]}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
end
for _, id in ipairs(ids) do
  local topics = ARGV[2] .. ':gateway:{' .. id .. '}:topics'
  for _, channel in ipairs(redis.call('SMEMBERS', topics)) do
    redis.call('HDEL', channel .. ':members', id)
    if ARGV[4] and redis.call('EXISTS', channel .. ':members') == 0 then
      redis.call('PEXPIRE', channel .. ':meta', ARGV[4])
    end
  end
  redis.call('DEL', topics)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
