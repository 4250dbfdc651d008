-- A gateway stops holding a topic. Contract v1; documented in docs/redis-keys.md. Every key
-- shares the topic's hash tag.
--
-- KEYS[1]  <topic>:members  hash {<gateway id>: <local member count>}
-- KEYS[2]  <topic>:hold     set for a recovery window first (when ARGV[2] > 0), so that at every
--                           instant the topic is held or on hold
-- KEYS[3]  <topic>:meta     hash {seq, src}: expires ARGV[3] ms from now once nobody holds the
--                           topic (a joining gateway makes it persistent again)
-- ARGV[1]  the gateway id
-- ARGV[2]  the recovery window in ms (0: recovery off, no hold)
-- ARGV[3]  the meta key's time to live once the topic is unheld, ms
--
-- Returns 1 if the topic is now held by nobody, else 0.
local window = tonumber(ARGV[2])
if window > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', window)
end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
