#!lua
--[[
retain_coupons: the retention sweep's removal of one user's final coupons (the sweep found them due in `final`):
each still final at or before the cutoff leaves the coupons hash and the user's index, recorded so the ledger
answers for it from then on. A coupon whose paid order is still here (refunded after the coupon's validity) waits
for that order: it is put back in `final` at the order's time, so a call on the order never finds it missing.
KEYS[1] coupons   hash   {w:n}:coupons     coupon id -> JSON record (lock.lua)
KEYS[2] finished  zset   {w:n}:final       final coupon ids -> when they became final
KEYS[3] done      zset   {w:n}:done        finished order fields -> when they finished
KEYS[4] index     zset   {w:n}:u:<user>    the user's coupon ids
KEYS[5] seq       string {w:n}:seq         the partition's event sequence
KEYS[6] events    stream {w:n}:events      the partition's ledger stream
ARGV[1] now       unix seconds
ARGV[2] event_id  gateway-made; the n-th removal of this call is recorded as "<event_id>.<n>"
ARGV[3] cutoff    now - the retention: coupons final at or before it leave
ARGV[4] user_id   whose coupons these are (a coupon of another user, or not due, is left as it is)
ARGV[5] coupon_ids  JSON array of coupon ids
REPLY ok removed
EVENT coupon_archived
]]
--#include integer
--#include order_lookup
local integer = integer_reader("retain_coupons")

local coupons_key, finished_key, done_key = KEYS[1], KEYS[2], KEYS[3]
local index_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6]
local now, event_id, cutoff, user_id = integer(ARGV[1], "now"), ARGV[2], integer(ARGV[3], "cutoff"), ARGV[4]
local ids = cjson.decode(ARGV[5] or "null")
if type(ids) ~= "table" then
  error("retain_coupons: coupon_ids must be a JSON array")
end

local removed = 0
for _, coupon_id in ipairs(ids) do
  local final_at = redis.call("ZSCORE", finished_key, coupon_id)
  local raw = redis.call("HGET", coupons_key, coupon_id)
  local coupon = raw and cjson.decode(raw)
  if final_at and tonumber(final_at) <= cutoff and (not coupon or coupon.user == user_id) then
    local waiting = coupon and coupon.order
      and redis.call("ZSCORE", done_key, order_field_of(coupon.user, coupon.order))
    if waiting then
      redis.call("ZADD", finished_key, waiting, coupon_id)
    else
      redis.call("ZREM", finished_key, coupon_id)
      if coupon then
        redis.call("HDEL", coupons_key, coupon_id)
        redis.call("ZREM", index_key, coupon_id)
        removed = removed + 1
        local seq = redis.call("INCR", seq_key)
        redis.call("XADD", events_key, "*", "type", "coupon_archived", "v", 2, "id", event_id .. "." .. removed,
          "seq", seq, "at", now, "user", coupon.user, "activity", coupon.activity, "coupon", coupon_id,
          "status", coupon.status, "version", coupon.version)
      end
    end
  end
end
return {"ok", removed}
