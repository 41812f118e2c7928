#!lua
--[[
restore_wallet: write a wallet bucket's state as rebuilt from the ledger (restore). "reset" empties the bucket's
coupons, orders, locks, counters, expiry indexes and finished orders' index; "user" writes one user's coupons
(records and index, the index replaced); "drop" deletes the index of a user the ledger holds no coupon for;
"checkout" adds orders, locks, counters and the expiry indexes' entries (a large bucket arrives in parts).
Failed code attempts ({w:n}:fails:*) are not ledger state: left alone. restore_finish then levels the partition's
seq and appends the event that records the restore.
KEYS[1] coupons   hash   {w:n}:coupons     coupon id -> JSON record (lock.lua)
KEYS[2] index     zset   {w:n}:u:<user>    the user's coupon ids (score 0); {w:n}:u: (untouched) but with
                                           "user" and "drop"
KEYS[3] orders    hash   {w:n}:orders      "<user>/<order>" -> JSON order (lock.lua)
KEYS[4] locks     zset   {w:n}:locks       locked coupon id -> its deadline
KEYS[5] counters  hash   {w:n}:counters    "<activity>|locked", "|redeemed", "|redeemed_value"
KEYS[6] expiring  zset   {w:n}:expiring    coupon id -> when the expiry sweep looks at it (coupons not final)
KEYS[7] finished  zset   {w:n}:final       coupon id -> when it became final
KEYS[8] done      zset   {w:n}:done        finished order fields -> when they finished
ARGV[1] step      "reset", "user", "drop" or "checkout"
ARGV[2] payload   "user": JSON [coupon id, record JSON, ...]; "checkout": JSON {orders: [field, record JSON, ...],
                  locks: [coupon id, deadline, ...], counters: [field, value, ...], expiring: [coupon id, time,
                  ...], finished: [coupon id, time, ...], done: [order field, time, ...]}; "[]" otherwise
REPLY ok
]]
local function pairs_list(list, name)  -- malformed ARGV fails here, before any write
  if type(list) ~= "table" or #list % 2 ~= 0 then
    error("restore_wallet: " .. name .. " must be a JSON array of pairs")
  end
  for _, item in ipairs(list) do
    if type(item) ~= "string" and type(item) ~= "number" then
      error("restore_wallet: " .. name .. " must hold strings and numbers only")
    end
  end
  return list
end

local function scored(list, name)  -- pairs of (member, score): every score a number
  for i = 2, #list, 2 do
    if tonumber(list[i]) == nil or tonumber(list[i]) ~= tonumber(list[i]) then
      error("restore_wallet: a " .. name .. " entry's score must be a number")
    end
  end
  return list
end

local coupons_key, index_key, orders_key, locks_key, counters_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expiring_key, finished_key, done_key = KEYS[6], KEYS[7], KEYS[8]
local step = ARGV[1]

if step == "reset" then
  redis.call("DEL", coupons_key, orders_key, locks_key, counters_key, expiring_key, finished_key, done_key)
  return {"ok"}
end
if step == "drop" then
  redis.call("DEL", index_key)
  return {"ok"}
end
if step == "checkout" then
  local payload = cjson.decode(ARGV[2])
  if type(payload) ~= "table" then
    error("restore_wallet: the checkout payload must be a JSON object")
  end
  local orders = pairs_list(payload.orders or {}, "orders")
  local locks = scored(pairs_list(payload.locks or {}, "locks"), "lock")
  local counters = pairs_list(payload.counters or {}, "counters")
  local expiring = scored(pairs_list(payload.expiring or {}, "expiring"), "expiring")
  local finished = scored(pairs_list(payload.finished or {}, "finished"), "finished")
  local done = scored(pairs_list(payload.done or {}, "done"), "done")
  for i = 1, #orders, 2 do
    redis.call("HSET", orders_key, orders[i], orders[i + 1])
  end
  for i = 1, #locks, 2 do
    redis.call("ZADD", locks_key, locks[i + 1], locks[i])
  end
  for i = 1, #counters, 2 do
    redis.call("HSET", counters_key, counters[i], counters[i + 1])
  end
  for i = 1, #expiring, 2 do
    redis.call("ZADD", expiring_key, expiring[i + 1], expiring[i])
  end
  for i = 1, #finished, 2 do
    redis.call("ZADD", finished_key, finished[i + 1], finished[i])
  end
  for i = 1, #done, 2 do
    redis.call("ZADD", done_key, done[i + 1], done[i])
  end
  return {"ok"}
end
if step ~= "user" then
  return redis.error_reply("restore_wallet: unknown step " .. tostring(step))
end
local records = pairs_list(cjson.decode(ARGV[2]), "records")
redis.call("DEL", index_key)
for i = 1, #records, 2 do
  redis.call("HSET", coupons_key, records[i], records[i + 1])
  redis.call("ZADD", index_key, 0, records[i])
end
return {"ok"}
