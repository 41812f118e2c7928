#!lua
--[[
sweep_expired: the expiry sweep's pass over one wallet bucket. Each coupon due in the expiring index is looked at
once: one still available past its validity becomes expired (version bumped) and is recorded as expired, so the
ledger learns what readers were already shown (shown_status); one that nothing can change any more (expired,
redeemed) moves to the finished index; one a lock still holds is looked at again when the lock ends. Readers are
correct without it; this makes the ledger say so too.
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON record (lock.lua)
KEYS[2] expiring  zset   {w:n}:expiring  coupon id -> when to look at it: its valid_until, later while locked
KEYS[3] finished  zset   {w:n}:final     coupon id -> when it became final: its valid_until, or (one a lock held
                                         then) when this sweep found the lock gone
KEYS[4] seq       string {w:n}:seq       the partition's event sequence
KEYS[5] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now    unix seconds
ARGV[2] limit  most index entries looked at in one pass
REPLY ok expired seen   how many coupons this pass expired, and how many index entries it looked at
EVENT expired   its id is "expired:<coupon id>": any repeat of a coupon's expiry is recognisably the same event
]]
--#include integer
--#include lapsed_lock
local integer = integer_reader("sweep_expired")

local coupons_key, expiring_key, finished_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, limit = integer(ARGV[1], "now"), integer(ARGV[2], "limit")

local expired = 0
local due = redis.call("ZRANGEBYSCORE", expiring_key, "-inf", now, "WITHSCORES", "LIMIT", 0, limit)
for i = 1, #due, 2 do
  local coupon_id, due_at = due[i], tonumber(due[i + 1])
  redis.call("ZREM", expiring_key, coupon_id)
  local raw = redis.call("HGET", coupons_key, coupon_id)
  local coupon = raw and cjson.decode(raw)
  if coupon then
    local valid_until = tonumber(coupon.valid_until)
    -- An entry due after its coupon's validity was put back by an earlier pass: a lock held the coupon then.
    local final_at = due_at > valid_until and now or valid_until
    if valid_until > now then
      redis.call("ZADD", expiring_key, valid_until, coupon_id)  -- due early (never written so): at its time
    elseif coupon.status == "locked" then
      -- Still held: looked at again at its deadline. A lapsed lock is the lock sweep's to record first (its
      -- lock_expired and the order's expiry): looked at again in the next pass.
      local again = lock_lapsed(coupon, now) and now + 1 or coupon.locked_until
      redis.call("ZADD", expiring_key, again, coupon_id)
    elseif coupon.status == "available" then
      coupon.status, coupon.version = "expired", coupon.version + 1
      redis.call("HSET", coupons_key, coupon_id, cjson.encode(coupon))
      redis.call("ZADD", finished_key, final_at, coupon_id)
      expired = expired + 1
      local seq = redis.call("INCR", seq_key)
      redis.call("XADD", events_key, "*", "type", "expired", "v", 2, "id", "expired:" .. coupon_id, "seq", seq,
        "at", now, "user", coupon.user, "activity", coupon.activity, "coupon", coupon_id,
        "template", coupon.template, "claim", coupon.claim, "valid_from", coupon.valid_from,
        "valid_until", coupon.valid_until, "version", coupon.version)
    else
      redis.call("ZADD", finished_key, final_at, coupon_id)  -- redeemed, or expired already: final
    end
  end
end
return {"ok", expired, #due / 2}
