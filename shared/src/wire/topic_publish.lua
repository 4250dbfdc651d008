-- Sequences publish requests into one topic, records them in the topic's history and publishes
-- them, atomically. Contract v1 (script v3: several entries per call; v3 lets :meta expire when only
-- a :hold keeps the topic); documented in
-- docs/redis-keys.md. Every key shares the topic's hash tag.
--
-- KEYS[1]  <topic>:meta     hash {seq, src}
-- KEYS[2]  <topic>:members  hash {<gateway id>: <local member count>}
-- KEYS[3]  <topic>:hist     stream: entry id = source entry id, field e = envelope
-- KEYS[4]  <topic>:hold     exists while a disconnected socket may recover into the topic
-- ARGV[1]  the topic's channel
-- ARGV[2]  history length cap (approximate, MAXLEN ~)
-- ARGV[3]  history retention in ms (the recovery window); 0 = no history
-- ARGV[4]  the source stream entry id ("<ms>-<n>") of the first entry
-- ARGV[5]  the msgpack-encoded envelope body of the first entry
-- ARGV[6], ARGV[7], ... further source id / body pairs, in stream order
--
-- Returns, for each entry in order, {status, seq, receivers} (flattened: 3 integers per entry).
-- status 1 = sequenced (published to `receivers` gateways, and recorded in history when kept),
-- 0 = nobody holds the topic or may recover into it (nothing written), -1 = this source entry
-- (or a later one) was already sequenced here (nothing written).
--
-- Entries are applied in order and an error stops the call, so what a failed call applied is a
-- prefix of its entries; calling it again with the same entries applies the rest exactly once.
local function parse_id(id)
  local ms, n = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(n)
end

local retention = tonumber(ARGV[3])
local held = redis.call('EXISTS', KEYS[2]) == 1
local keep = retention > 0 and (held or redis.call('EXISTS', KEYS[4]) == 1)

local last = redis.call('HGET', KEYS[1], 'src')
local lms, ln
if last then
  lms, ln = parse_id(last)
end

local out = {}
for i = 4, #ARGV - 1, 2 do
  local src = ARGV[i]
  local ms, n = parse_id(src)
  if last and (ms < lms or (ms == lms and n <= ln)) then
    out[#out + 1] = -1
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
    out[#out + 1] = 0
  elseif not held and not keep then
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('HSET', KEYS[1], 'src', src)
    if not held then
      -- Only a :hold keeps the topic: its meta lives as long (a joining gateway persists it).
      redis.call('PEXPIRE', KEYS[1], retention)
    end
    last, lms, ln = src, ms, n
    -- Envelope = msgpack array [version 1, seq, body]: 0x93, fixint 1, the seq, the body.
    local envelope = '\147\1' .. cmsgpack.pack(seq) .. ARGV[i + 1]
    if keep then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], src, 'e', envelope)
      redis.call('PEXPIRE', KEYS[3], retention)
    end
    local receivers = 0
    if held then
      receivers = redis.call('PUBLISH', ARGV[1], envelope)
    end
    out[#out + 1] = 1
    out[#out + 1] = seq
    out[#out + 1] = receivers
  end
end
return out
