#!lua
--[[
refund: the paid order was refunded in full. Its coupon is returned (available again) while still valid; past
its validity it stays redeemed and the answer says returned false. A repeat answers as the first did.
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON record (lock.lua)
KEYS[2] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON order (lock.lua)
KEYS[3] counters  hash   {w:n}:counters  "<activity>|locked", "|redeemed", "|redeemed_value"
KEYS[4] done      zset   {w:n}:done      finished order fields -> when they finished (retain_orders)
KEYS[5] seq       string {w:n}:seq       the partition's event sequence
KEYS[6] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now       unix seconds
ARGV[2] event_id  gateway-made
ARGV[3] user_id
ARGV[4] order_id
REPLY ok answer       answer: {order_id, coupon_id, status, returned}: status available when returned, else redeemed
REPLY replay answer   refunded before: the first answer
REPLY not_found          the order never locked a coupon
REPLY coupon_unavailable the order was not paid (its coupon is locked, released or lapsed)
EVENT refunded       the coupon's version moves only when it is returned ("version" is "" otherwise)
]]
--#include integer
--#include order_lookup
--#include checkout_event
local integer = integer_reader("refund")

local coupons_key, orders_key, counters_key = KEYS[1], KEYS[2], KEYS[3]
local done_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6]
local now, event_id, user_id, order_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
if order_id == nil then
  error("refund: all 4 arguments must be given")
end
local order_field = order_field_of(user_id, order_id)

local order = find_order(orders_key, order_field)
if not order then
  return {"not_found"}
end
local function answer(returned)
  return string.format('{"order_id":%s,"coupon_id":%s,"status":"%s","returned":%s}',
    cjson.encode(order_id), cjson.encode(order.coupon), returned and "available" or "redeemed",
    returned and "true" or "false")
end
if order.status == "refunded" then
  return {"replay", answer(order.returned)}
end
if order.status ~= "redeemed" then
  return {"coupon_unavailable"}
end

local coupon = coupon_of(coupons_key, order)
if not coupon then
  return {"coupon_unavailable"}  -- never while the order is here: retain_coupons keeps a paid order's coupon
end
local returned = now < tonumber(coupon.valid_until)
local version = ""
if returned then
  coupon.status, coupon.order, coupon.discount = "available", nil, nil
  coupon.version = coupon.version + 1
  version = coupon.version
  redis.call("HSET", coupons_key, order.coupon, cjson.encode(coupon))
  redis.call("HINCRBY", counters_key, coupon.activity .. "|redeemed", -1)
  redis.call("HINCRBY", counters_key, coupon.activity .. "|redeemed_value", -order.discount)
end
order.status, order.returned, order.version = "refunded", returned, order.version + 1
redis.call("HSET", orders_key, order_field, cjson.encode(order))
redis.call("ZADD", done_key, now, order_field)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*", "type", "refunded", "v", 2, "id", event_id, "seq", seq, "at", now,
  checkout_fields(user_id, order.coupon, coupon, {
    status = coupon.status, version = version, order = order_id, order_status = "refunded",
    order_version = order.version, discount = order.discount, split = order.split, locked_until = "",
    returned = returned and "1" or "0",
  }))
return {"ok", answer(returned)}
