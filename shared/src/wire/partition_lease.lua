-- Takes, renews or gives up the lease of one fanout partition. Contract v1; documented in
-- docs/redis-keys.md and docs/fanout.md. Both keys share the partition's hash tag.
--
-- KEYS[1]  <prefix>:fanout:{<i>/<P>}:lease    string: the owning replica's id, with an expiry
-- KEYS[2]  <prefix>:fanout:{<i>/<P>}:cursor   string: last entry id whose effects are all in Redis
-- ARGV[1]  the calling replica's id
-- ARGV[2]  `acquire`, `renew` or `release`
-- ARGV[3]  lease time to live in ms (acquire, renew)
--
-- acquire: takes the lease if it is free (or already the caller's) and sets its expiry.
-- renew:   sets the expiry if the caller holds the lease; never creates it (a renewal racing
--          with the caller's own release must not take the partition back).
-- release: deletes the lease if the caller holds it.
-- Returns {1, <cursor or ''>} when the caller holds the lease after acquire/renew, or released
-- it; {0, <owner or ''>} otherwise (nothing written).
local owner = redis.call('GET', KEYS[1])
local mode = ARGV[2]
if owner ~= ARGV[1] and not (mode == 'acquire' and not owner) then
  return {0, owner or ''}
end
if mode == 'release' then
  redis.call('DEL', KEYS[1])
  return {1, ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {1, redis.call('GET', KEYS[2]) or ''}
