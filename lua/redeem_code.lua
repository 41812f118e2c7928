#!lua
--[[
redeem_code: turn a code into its activity's pack for the caller, atomically, once. The user who redeemed it
and asks again gets the first answer. A code that does not exist, or that someone else redeemed, is
invalid_code (one answer for both; a typo never reaches Redis). Codes have their own rules: the blocklist
verdict and the window copied when the batch was made apply; pause, end, eligibility and limits do not.
KEYS[1] codes     hash   {c:n}:codes     code hash -> JSON {batch} (+ user, claim, answer, at once redeemed)
KEYS[2] batches   hash   {c:n}:batches   batch id -> JSON {activity, starts_at, ends_at, pack}
KEYS[3] counters  hash   {c:n}:counters  activity id -> codes redeemed
KEYS[4] seq       string {c:n}:seq       the partition's event sequence
KEYS[5] events    stream {c:n}:events    the partition's ledger stream
ARGV[1] now        unix seconds
ARGV[2] event_id   gateway-made
ARGV[3] code_hash  the code's keyed hash
ARGV[4] user_id
ARGV[5] device_id
ARGV[6] blocked    "1" when the gateway's blocklist names the user or device
ARGV[7] claim_id   gateway-made; coupon ids are "<claim_id>.<n>" as a claim's
REPLY ok answer activity   answer: {claim_id, coupons:[{coupon_id, template_id, valid_from, valid_until}]}
REPLY replay answer activity  this user redeemed this code before
REPLY blocked
REPLY invalid_code
REPLY not_started
REPLY ended
EVENT code_redeemed
]]
--#include integer
--#include pack_answer
local integer = integer_reader("redeem_code")

local codes_key, batches_key, counters_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, event_id, code_hash, user_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local device_id, blocked, claim_id = ARGV[5], ARGV[6] == "1", ARGV[7]
if claim_id == nil then
  error("redeem_code: all 7 arguments must be given")
end

local raw = redis.call("HGET", codes_key, code_hash)
local code = raw and cjson.decode(raw)
if code and code.user == user_id then
  return {"replay", code.answer, code.activity}
end
if blocked then
  return {"blocked"}
end
if not code or code.user then
  return {"invalid_code"}
end
local batch = cjson.decode(redis.call("HGET", batches_key, code.batch))
if now < tonumber(batch.starts_at) then
  return {"not_started"}
end
if now >= tonumber(batch.ends_at) then
  return {"ended"}
end

local answer = pack_answer(claim_id, batch.pack, now)

code.user, code.claim, code.answer, code.activity, code.at = user_id, claim_id, answer, batch.activity, now
redis.call("HSET", codes_key, code_hash, cjson.encode(code))
redis.call("HINCRBY", counters_key, batch.activity, 1)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "code_redeemed", "v", 2, "id", event_id, "seq", seq, "at", now, "code", code_hash, "batch", code.batch,
  "activity", batch.activity, "claim_id", claim_id, "user", user_id, "device", device_id, "answer", answer)
return {"ok", answer, batch.activity}
