-- Sequences one publish request into one topic and publishes it, atomically.
-- Contract v1; documented in docs/redis-keys.md. Every key shares the topic's hash tag.
--
-- KEYS[1]  <topic>:meta     hash {seq, src}
-- KEYS[2]  <topic>:members  hash {<gateway id>: <local member count>}
-- ARGV[1]  the topic's channel
-- ARGV[2]  the source stream entry id ("<ms>-<n>")
-- ARGV[3]  the msgpack-encoded envelope body
--
-- Returns {status, seq, receivers}: status 1 = published, 0 = nobody holds the topic (nothing
-- written), -1 = this source entry (or a later one) was already sequenced here: a redelivery.
local function parse_id(id)
  local ms, n = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(n)
end

local last = redis.call('HGET', KEYS[1], 'src')
if last then
  local lms, ln = parse_id(last)
  local ms, n = parse_id(ARGV[2])
  if ms < lms or (ms == lms and n <= ln) then
    return {-1, tonumber(redis.call('HGET', KEYS[1], 'seq') or '0'), 0}
  end
end

if redis.call('EXISTS', KEYS[2]) == 0 then
  return {0, 0, 0}
end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'src', ARGV[2])
-- Envelope = msgpack array [version 1, seq, body]: 0x93, fixint 1, the seq, the body.
local envelope = '\147\1' .. cmsgpack.pack(seq) .. ARGV[3]
local receivers = redis.call('PUBLISH', ARGV[1], envelope)
return {1, seq, receivers}
