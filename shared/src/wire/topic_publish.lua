-- Sequences one publish request into one topic, records it in the topic's history and publishes
-- it, atomically. Contract v1; documented in docs/redis-keys.md. Every key shares the topic's
-- hash tag.
--
-- KEYS[1]  <topic>:meta     hash {seq, src}
-- KEYS[2]  <topic>:members  hash {<gateway id>: <local member count>}
-- KEYS[3]  <topic>:hist     stream: entry id = source entry id, field e = envelope
-- KEYS[4]  <topic>:hold     exists while a disconnected socket may recover into the topic
-- ARGV[1]  the topic's channel
-- ARGV[2]  the source stream entry id ("<ms>-<n>")
-- ARGV[3]  the msgpack-encoded envelope body
-- ARGV[4]  history length cap (approximate, MAXLEN ~)
-- ARGV[5]  history retention in ms (the recovery window); 0 = no history
--
-- Returns {status, seq, receivers}: status 1 = sequenced (published to `receivers` gateways,
-- and recorded in history when kept), 0 = nobody holds the topic or may recover into it
-- (nothing written), -1 = this source entry (or a later one) was already sequenced here.
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

local retention = tonumber(ARGV[5])
local held = redis.call('EXISTS', KEYS[2]) == 1
local keep = retention > 0 and (held or redis.call('EXISTS', KEYS[4]) == 1)
if not held and not keep then
  return {0, 0, 0}
end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'src', ARGV[2])
-- Envelope = msgpack array [version 1, seq, body]: 0x93, fixint 1, the seq, the body.
local envelope = '\147\1' .. cmsgpack.pack(seq) .. ARGV[3]
if keep then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], ARGV[2], 'e', envelope)
  redis.call('PEXPIRE', KEYS[3], retention)
end
local receivers = 0
if held then
  receivers = redis.call('PUBLISH', ARGV[1], envelope)
end
return {1, seq, receivers}
