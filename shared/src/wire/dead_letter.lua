-- Copies refused publish requests to the dead-letter stream, each at most once. Contract v1;
-- documented in docs/redis-keys.md and docs/fanout.md.
--
-- KEYS[1]  <prefix>:publish:dead   stream: original fields, then `error` and `source_id`
-- ARGV[1]  length cap (approximate, MAXLEN ~)
-- ARGV[2]  ... then, for each refused entry in stream order: its source id, the number k of
--          its original field and value items (twice its field count), those k items, and the
--          error text
--
-- Entries are written in stream order, and `source_id` is always the last value of a
-- dead-letter entry: an entry whose source id is not greater than that of the stream's last
-- entry was dead-lettered already (by this replica before a crash, or by another one that owned
-- the partition at the same time) and is skipped.
--
-- Returns the number of entries written.
local function parse_id(id)
  local ms, n = string.match(id or '', '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(n)
end

local lms, ln
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if tail[1] then
  local fields = tail[1][2]
  lms, ln = parse_id(fields[#fields])
end

local written = 0
local i = 2
while i <= #ARGV do
  local src = ARGV[i]
  local k = tonumber(ARGV[i + 1])
  local err = ARGV[i + 2 + k]
  local ms, n = parse_id(src)
  if not lms or ms > lms or (ms == lms and n > ln) then
    local args = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
    for j = i + 2, i + 1 + k do
      args[#args + 1] = ARGV[j]
    end
    args[#args + 1] = 'error'
    args[#args + 1] = err
    args[#args + 1] = 'source_id'
    args[#args + 1] = src
    redis.call(unpack(args))
    lms, ln = ms, n
    written = written + 1
  end
  i = i + 3 + k
end
return written
