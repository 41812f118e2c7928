#!lua
--[[
deliver: put a claim's coupons into the owner's wallet bucket. Idempotent on the claim: the gateway calls it
after claim (and on a replay), and the worker calls it again when it persists the claimed event.
KEYS[1] coupons  hash   {w:n}:coupons     coupon id -> JSON record {user, activity, template, claim, valid_from,
                                          valid_until, status, version}
KEYS[2] index    zset   {w:n}:u:<user>    the user's coupon ids (score 0; ids sort by creation time)
KEYS[3] expiring zset   {w:n}:expiring    coupon id -> its valid_until: what the expiry sweep looks at
KEYS[4] seq      string {w:n}:seq         the partition's event sequence
KEYS[5] events   stream {w:n}:events      the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] user_id
ARGV[4] activity_id
ARGV[5] answer      the claim's answer JSON {claim_id, coupons:[{coupon_id, template_id, valid_from, valid_until}]}
REPLY ok       coupons created
REPLY replay   this claim's coupons were already delivered; nothing written
EVENT delivered
]]
--#include integer
local integer = integer_reader("deliver")

local coupons_key, index_key, expiring_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, event_id, user_id, activity_id, answer = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local claim = cjson.decode(answer)
local well_formed = type(claim) == "table" and type(claim.claim_id) == "string"
  and type(claim.coupons) == "table" and #claim.coupons > 0
for _, coupon in ipairs(well_formed and claim.coupons or {}) do
  well_formed = well_formed and type(coupon) == "table" and type(coupon.coupon_id) == "string"
    and type(coupon.valid_until) == "number"
end
if not well_formed then
  error("deliver: answer must be {claim_id, coupons:[{coupon_id, valid_until, ...}, ...]}")
end
if redis.call("HEXISTS", coupons_key, claim.coupons[1].coupon_id) == 1 then
  return {"replay"}
end
local records = {}
for i, coupon in ipairs(claim.coupons) do
  records[i] = cjson.encode({
    user = user_id, activity = activity_id, template = coupon.template_id, claim = claim.claim_id,
    valid_from = coupon.valid_from, valid_until = coupon.valid_until, status = "available", version = 1,
  })
end
for i, coupon in ipairs(claim.coupons) do
  redis.call("HSET", coupons_key, coupon.coupon_id, records[i])
  redis.call("ZADD", index_key, 0, coupon.coupon_id)
  redis.call("ZADD", expiring_key, coupon.valid_until, coupon.coupon_id)
end
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "delivered", "v", 2, "id", event_id, "seq", seq, "at", now,
  "activity", activity_id, "claim_id", claim.claim_id, "user", user_id, "version", 1, "answer", answer)
return {"ok"}
