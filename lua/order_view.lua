#!lua flags=no-writes
--[[
order_view: an order and the coupon it names, as stored (the gateway shapes the answer).
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON record (lock.lua)
KEYS[2] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON order (lock.lua)
ARGV[1] user_id
ARGV[2] order_id
REPLY ok order coupon   the two JSON records
REPLY not_found         the order never locked a coupon
]]
--#include order_lookup
local coupons_key, orders_key = KEYS[1], KEYS[2]
local order_raw = redis.call("HGET", orders_key, order_field_of(ARGV[1], ARGV[2]))
if not order_raw then
  return {"not_found"}
end
return {"ok", order_raw, redis.call("HGET", coupons_key, cjson.decode(order_raw).coupon)}
