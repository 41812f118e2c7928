-- order_lookup: an order in the wallet's orders hash ("<user>/<order>" -> JSON order, lock.lua), and the coupon
-- it names.
local function order_field_of(user_id, order_id)
  return user_id .. "/" .. order_id
end

-- The order decoded, or false when the user never locked a coupon to it.
local function find_order(orders_key, order_field)
  local raw = redis.call("HGET", orders_key, order_field)
  return raw and cjson.decode(raw)
end

-- The order's coupon decoded, or false once it left Redis (final, past the retention: retain_coupons).
local function coupon_of(coupons_key, order)
  local raw = redis.call("HGET", coupons_key, order.coupon)
  return raw and cjson.decode(raw)
end
