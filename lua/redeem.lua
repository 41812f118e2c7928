#!lua
--[[
redeem: the order is paid; its coupon becomes redeemed. Within the lock's deadline the lock is honoured; after
it, the redeem succeeds only if the coupon is still free (available, or its lapsed lock) and valid. A repeat
answers as the first did.
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON record (lock.lua)
KEYS[2] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON order (lock.lua)
KEYS[3] locks     zset   {w:n}:locks     locked coupon id -> its deadline
KEYS[4] counters  hash   {w:n}:counters  "<activity>|locked", "|redeemed", "|redeemed_value"
KEYS[5] done      zset   {w:n}:done      finished order fields -> when they finished (retain_orders)
KEYS[6] seq       string {w:n}:seq       the partition's event sequence
KEYS[7] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now       unix seconds
ARGV[2] event_id  gateway-made
ARGV[3] user_id
ARGV[4] order_id
REPLY ok answer       answer: {order_id, coupon_id, status: "redeemed"}
REPLY replay answer   the order was redeemed before
REPLY not_found          the order never locked a coupon
REPLY coupon_unavailable the lock lapsed and the coupon was taken, used or expired; or the order was refunded
EVENT redeemed
]]
--#include integer
--#include lapsed_lock
--#include order_lookup
--#include checkout_event
local integer = integer_reader("redeem")

local coupons_key, orders_key, locks_key = KEYS[1], KEYS[2], KEYS[3]
local counters_key, done_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, event_id, user_id, order_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
if order_id == nil then
  error("redeem: all 4 arguments must be given")
end
local order_field = order_field_of(user_id, order_id)

local order = find_order(orders_key, order_field)
if not order then
  return {"not_found"}
end
local answer = string.format('{"order_id":%s,"coupon_id":%s,"status":"redeemed"}',
  cjson.encode(order_id), cjson.encode(order.coupon))
if order.status == "redeemed" then
  return {"replay", answer}
end
if order.status == "refunded" then
  return {"coupon_unavailable"}
end
local coupon = coupon_of(coupons_key, order)
if not coupon then
  return {"coupon_unavailable"}  -- final and past the retention: it left Redis
end
local was_locked = coupon.status == "locked"
local held = was_locked and coupon.order == order_id and not lock_lapsed(coupon, now)
if not held then
  local free = coupon.status == "available" or lock_lapsed(coupon, now)
  if not free or now < tonumber(coupon.valid_from) or now >= tonumber(coupon.valid_until) then
    return {"coupon_unavailable"}
  end
end

coupon.status, coupon.order, coupon.locked_until, coupon.discount = "redeemed", order_id, nil, order.discount
coupon.version = coupon.version + 1
redis.call("HSET", coupons_key, order.coupon, cjson.encode(coupon))
redis.call("ZREM", locks_key, order.coupon)
if was_locked then
  redis.call("HINCRBY", counters_key, coupon.activity .. "|locked", -1)
end
redis.call("HINCRBY", counters_key, coupon.activity .. "|redeemed", 1)
redis.call("HINCRBY", counters_key, coupon.activity .. "|redeemed_value", order.discount)
order.status, order.locked_until, order.version = "redeemed", nil, order.version + 1
redis.call("HSET", orders_key, order_field, cjson.encode(order))
redis.call("ZADD", done_key, math.max(now, tonumber(coupon.valid_until)), order_field)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*", "type", "redeemed", "v", 2, "id", event_id, "seq", seq, "at", now,
  checkout_fields(user_id, order.coupon, coupon, {
    status = "redeemed", version = coupon.version, order = order_id, order_status = "redeemed",
    order_version = order.version, discount = order.discount, split = order.split, locked_until = "", returned = "",
  }))
return {"ok", answer}
