-- Records that a fanout partition is done up to a publish-stream entry: moves its cursor
-- forward, if the caller still holds the partition's lease. Contract v1; documented in
-- docs/redis-keys.md and docs/fanout.md. Both keys share the partition's hash tag.
--
-- KEYS[1]  <prefix>:fanout:{<i>/<P>}:lease    string: the owning replica's id, with an expiry
-- KEYS[2]  <prefix>:fanout:{<i>/<P>}:cursor   string: last entry id whose effects are all in Redis
-- ARGV[1]  the calling replica's id
-- ARGV[2]  the entry id up to which every effect on the partition's topics is in Redis
--
-- Returns 1 when the cursor is now at or past ARGV[2] (it never moves back), 0 when the caller
-- does not hold the lease (nothing written: the partition is someone else's, or nobody's).
local function parse_id(id)
  local ms, n = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(n)
end

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local cursor = redis.call('GET', KEYS[2])
if cursor then
  local cms, cn = parse_id(cursor)
  local ms, n = parse_id(ARGV[2])
  if cms and (ms < cms or (ms == cms and n <= cn)) then
    return 1
  end
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
