#!lua
--[[
sweep_locks: the sweeper's pass over one wallet bucket: each lock past its deadline becomes available again
(version bumped, its order marked expired) and is recorded as lock_expired, so the ledger follows. Locks are
correct without it (every script treats a lapsed lock as available); this makes the ledger and the counters
say so too.
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON record (lock.lua)
KEYS[2] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON order (lock.lua)
KEYS[3] locks     zset   {w:n}:locks     locked coupon id -> its deadline
KEYS[4] counters  hash   {w:n}:counters  "<activity>|locked", "|redeemed", "|redeemed_value"
KEYS[5] done      zset   {w:n}:done      finished order fields -> when they finished (retain_orders)
KEYS[6] seq       string {w:n}:seq       the partition's event sequence
KEYS[7] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now        unix seconds
ARGV[2] event_id   gateway-made; the n-th expiry of this pass is recorded as "<event_id>.<n>"
ARGV[3] limit      most locks expired in one pass
REPLY ok expired seen   how many locks this pass expired, and how many index entries it looked at
EVENT lock_expired
]]
--#include integer
--#include lapsed_lock
--#include order_lookup
--#include checkout_event
local integer = integer_reader("sweep_locks")

local coupons_key, orders_key, locks_key = KEYS[1], KEYS[2], KEYS[3]
local counters_key, done_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, event_id, limit = integer(ARGV[1], "now"), ARGV[2], integer(ARGV[3], "limit")

local expired = 0
local due = redis.call("ZRANGEBYSCORE", locks_key, "-inf", now, "LIMIT", 0, limit)
for _, coupon_id in ipairs(due) do
  redis.call("ZREM", locks_key, coupon_id)
  local raw = redis.call("HGET", coupons_key, coupon_id)
  local coupon = raw and cjson.decode(raw)
  if coupon and lock_lapsed(coupon, now) then
    local order_id = coupon.order
    coupon.status, coupon.order, coupon.locked_until, coupon.discount = "available", nil, nil, nil
    coupon.version = coupon.version + 1
    redis.call("HSET", coupons_key, coupon_id, cjson.encode(coupon))
    redis.call("HINCRBY", counters_key, coupon.activity .. "|locked", -1)
    local order_field = order_field_of(coupon.user, order_id)
    local order = find_order(orders_key, order_field)
    local order_status, order_version, discount, split = "", "", "", ""
    if order and order.status == "locked" and order.coupon == coupon_id then
      order.status, order.locked_until, order.version = "expired", nil, order.version + 1
      redis.call("HSET", orders_key, order_field, cjson.encode(order))
      redis.call("ZADD", done_key, now, order_field)
      order_status, order_version, discount, split = "expired", order.version, order.discount, order.split
    end
    expired = expired + 1
    local seq = redis.call("INCR", seq_key)
    redis.call("XADD", events_key, "*", "type", "lock_expired", "v", 2, "id", event_id .. "." .. expired, "seq", seq,
      "at", now, checkout_fields(coupon.user, coupon_id, coupon, {
        status = "available", version = coupon.version, order = order_id, order_status = order_status,
        order_version = order_version, discount = discount, split = split, locked_until = "", returned = "",
      }))
  end
end
return {"ok", expired, #due}
