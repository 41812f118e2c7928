#!lua
--[[
lock: lock one of the user's coupons to an order until a deadline. A lock past its deadline counts as available
(lazy expiry); the same lock again answers the existing lock; another coupon for an order that holds one, or a
coupon another order holds, is coupon_unavailable. Checks: the coupon (the user's), the order, the coupon's
state and validity, then applicability (the gateway computed the discount from the template's terms).
KEYS[1] coupons   hash   {w:n}:coupons   coupon id -> JSON {user, activity, template, claim, valid_from, valid_until,
                                         status, version, order?, locked_until?, discount?}
KEYS[2] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON {coupon, status, discount, split, locked_until,
                                         version, returned?}; status locked, redeemed, released, refunded, expired
KEYS[3] locks     zset   {w:n}:locks     locked coupon id -> its deadline (the sweeper's index)
KEYS[4] counters  hash   {w:n}:counters  "<activity>|locked", "|redeemed", "|redeemed_value"
KEYS[5] done      zset   {w:n}:done      finished order fields -> when they finished (retain_orders)
KEYS[6] seq       string {w:n}:seq       the partition's event sequence
KEYS[7] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now           unix seconds
ARGV[2] event_id      gateway-made
ARGV[3] user_id
ARGV[4] order_id
ARGV[5] coupon_id
ARGV[6] discount      cents this coupon gives on the order's lines; "" when it does not apply to them
ARGV[7] split         JSON array [{sku, amount}] of the discount over the lines
ARGV[8] lock_seconds  how long the lock holds
REPLY ok answer       answer: {order_id, coupon_id, discount, split, locked_until}
REPLY replay answer   this order already holds this coupon's lock: its answer
REPLY not_found          no such coupon in the user's wallet
REPLY coupon_unavailable locked by another order, redeemed, expired or not yet valid; the order was paid (redeemed
                         or refunded); or the order holds another
REPLY not_applicable     the coupon does not apply to these lines
EVENT locked
]]
--#include integer
--#include lapsed_lock
--#include order_lookup
--#include checkout_event
local integer = integer_reader("lock")

local coupons_key, orders_key, locks_key = KEYS[1], KEYS[2], KEYS[3]
local counters_key, done_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, event_id, user_id, order_id, coupon_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local discount, split, lock_seconds = ARGV[6], ARGV[7], integer(ARGV[8], "lock_seconds")
if discount ~= "" and integer(discount, "discount") < 0 then
  error("lock: discount must be 0 or more")
end
if type(cjson.decode(split)) ~= "table" then
  error("lock: split must be a JSON array")
end
local order_field = order_field_of(user_id, order_id)

local function answer_of(order)
  return string.format('{"order_id":%s,"coupon_id":%s,"discount":%d,"split":%s,"locked_until":%d}',
    cjson.encode(order_id), cjson.encode(order.coupon), order.discount, order.split, order.locked_until)
end

local function held_lock(record)
  return record.status == "locked" and record.order == order_id and not lock_lapsed(record, now)
end

local raw = redis.call("HGET", coupons_key, coupon_id)
if not raw then
  return {"not_found"}
end
local coupon = cjson.decode(raw)
if coupon.user ~= user_id then
  return {"not_found"}
end

local order_version = 0
local order = find_order(orders_key, order_field)
if order then
  order_version = order.version
  if order.status == "redeemed" or order.status == "refunded" then
    return {"coupon_unavailable"}  -- a paid order keeps the coupon it was paid with
  end
  if order.status == "locked" then
    if order.coupon == coupon_id then
      if held_lock(coupon) then
        return {"replay", answer_of(order)}
      end
    else
      local other = redis.call("HGET", coupons_key, order.coupon)
      if other and held_lock(cjson.decode(other)) then
        return {"coupon_unavailable"}
      end
    end
  end
end

local lapsed = lock_lapsed(coupon, now)
if coupon.status ~= "available" and not lapsed then
  return {"coupon_unavailable"}
end
if now < tonumber(coupon.valid_from) or now >= tonumber(coupon.valid_until) then
  return {"coupon_unavailable"}
end
if discount == "" then
  return {"not_applicable"}
end

local locked_until = now + lock_seconds
coupon.status, coupon.order, coupon.locked_until, coupon.discount = "locked", order_id, locked_until, tonumber(discount)
coupon.version = coupon.version + 1
redis.call("HSET", coupons_key, coupon_id, cjson.encode(coupon))
redis.call("ZADD", locks_key, locked_until, coupon_id)
if not lapsed then
  redis.call("HINCRBY", counters_key, coupon.activity .. "|locked", 1)
end
local new_order = {
  coupon = coupon_id, status = "locked", discount = tonumber(discount), split = split,
  locked_until = locked_until, version = order_version + 1,
}
redis.call("HSET", orders_key, order_field, cjson.encode(new_order))
redis.call("ZREM", done_key, order_field)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*", "type", "locked", "v", 2, "id", event_id, "seq", seq, "at", now,
  checkout_fields(user_id, coupon_id, coupon, {
    status = "locked", version = coupon.version, order = order_id, order_status = "locked",
    order_version = new_order.version, discount = discount, split = split, locked_until = locked_until, returned = "",
  }))
return {"ok", answer_of(new_order)}
