#!lua
--[[
release: the order was cancelled before payment; the coupon it holds (its lock, lapsed or not) becomes
available. When the order no longer holds it (the sweeper expired the lock, or another order took the coupon
since), nothing is written and the answer names the coupon's state. A repeat answers as the first did.
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
REPLY ok answer       answer: {order_id, coupon_id, status}; status available after a release (expired when
                      the coupon's validity passed meanwhile)
REPLY replay answer   released before (status available), or the order no longer holds the coupon (its lock
                      lapsed): status is the coupon's state (available, locked, redeemed or expired)
REPLY not_found          the order never locked a coupon
REPLY coupon_unavailable the order was paid (redeemed or refunded): a refund, not a release
EVENT released
]]
--#include integer
--#include shown_status
--#include order_lookup
--#include checkout_event
local integer = integer_reader("release")

local coupons_key, orders_key, locks_key = KEYS[1], KEYS[2], KEYS[3]
local counters_key, done_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, event_id, user_id, order_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
if order_id == nil then
  error("release: all 4 arguments must be given")
end
local order_field = order_field_of(user_id, order_id)

local order = find_order(orders_key, order_field)
if not order then
  return {"not_found"}
end
if order.status == "redeemed" or order.status == "refunded" then
  return {"coupon_unavailable"}
end
local function answer(status)
  return string.format('{"order_id":%s,"coupon_id":%s,"status":"%s"}',
    cjson.encode(order_id), cjson.encode(order.coupon), status)
end
if order.status == "released" then
  return {"replay", answer("available")}
end
local coupon = coupon_of(coupons_key, order)
if not coupon then
  return {"replay", answer("expired")}  -- final and past the retention: it left Redis
end
if order.status ~= "locked" or coupon.status ~= "locked" or coupon.order ~= order_id then
  return {"replay", answer(shown_status(coupon, now))}
end

coupon.status, coupon.order, coupon.locked_until, coupon.discount = "available", nil, nil, nil
coupon.version = coupon.version + 1
redis.call("HSET", coupons_key, order.coupon, cjson.encode(coupon))
redis.call("ZREM", locks_key, order.coupon)
redis.call("HINCRBY", counters_key, coupon.activity .. "|locked", -1)
order.status, order.locked_until, order.version = "released", nil, order.version + 1
redis.call("HSET", orders_key, order_field, cjson.encode(order))
redis.call("ZADD", done_key, now, order_field)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*", "type", "released", "v", 2, "id", event_id, "seq", seq, "at", now,
  checkout_fields(user_id, order.coupon, coupon, {
    status = "available", version = coupon.version, order = order_id, order_status = "released",
    order_version = order.version, discount = order.discount, split = order.split, locked_until = "", returned = "",
  }))
return {"ok", answer(shown_status(coupon, now))}
