-- checkout_event: what every checkout event (locked, redeemed, released, refunded, lock_expired) carries after its
-- type, id, seq and at, as XADD fields: the user, the coupon as its record holds it, and the change, a table of
-- status, version, order, order_status, order_version, discount, split, locked_until and returned. Each value goes
-- out as given (a nil fails the XADD, as it would written out).
local function checkout_fields(user_id, coupon_id, coupon, change)
  return "user", user_id, "activity", coupon.activity, "coupon", coupon_id, "template", coupon.template,
    "claim", coupon.claim, "valid_from", coupon.valid_from, "valid_until", coupon.valid_until,
    "status", change.status, "version", change.version, "order", change.order,
    "order_status", change.order_status, "order_version", change.order_version, "discount", change.discount,
    "split", change.split, "locked_until", change.locked_until, "returned", change.returned
end
