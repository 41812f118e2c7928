#!lua
--[[
restore_wallet: write a wallet bucket's coupons as rebuilt from the ledger (restore). "reset" empties the
bucket's coupon hash; "user" writes one user's coupons (records and index, the index replaced); "drop" deletes
the index of a user the ledger holds no coupon for.
restore_finish then levels the partition's seq and appends the event that records the restore.
KEYS[1] coupons  hash   {w:n}:coupons     coupon id -> JSON record (as deliver writes it)
KEYS[2] index    zset   {w:n}:u:<user>    the user's coupon ids (score 0); with "reset", {w:n}:u: (untouched)
ARGV[1] step     "reset", "user" or "drop"
ARGV[2] records  JSON [coupon id, record JSON, ...] ("user"; "[]" otherwise)
REPLY ok
]]
local coupons_key, index_key = KEYS[1], KEYS[2]
local step = ARGV[1]

if step == "reset" then
  redis.call("DEL", coupons_key)
  return {"ok"}
end
if step == "drop" then
  redis.call("DEL", index_key)
  return {"ok"}
end
if step ~= "user" then
  return redis.error_reply("restore_wallet: unknown step " .. tostring(step))
end
local records = cjson.decode(ARGV[2])
redis.call("DEL", index_key)
for i = 1, #records, 2 do
  redis.call("HSET", coupons_key, records[i], records[i + 1])
  redis.call("ZADD", index_key, 0, records[i])
end
return {"ok"}
