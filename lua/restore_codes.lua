#!lua
--[[
restore_codes: write a code bucket's state as rebuilt from the ledger (restore). "reset" replaces the codes, the
batch records and the redeemed counters with the payload's; "more" adds further ones (a large bucket arrives in
parts). restore_finish then levels the partition's seq and appends the event that records the restore.
KEYS[1] codes     hash   {c:n}:codes     code hash -> JSON {batch} (+ user, claim, answer, activity, at once
                                         redeemed)
KEYS[2] batches   hash   {c:n}:batches   batch id -> JSON {activity, starts_at, ends_at, pack}
KEYS[3] counters  hash   {c:n}:counters  activity id -> codes redeemed
ARGV[1] step      "reset" or "more"
ARGV[2] payload   JSON {codes: [hash, record JSON, ...], batches: [id, record JSON, ...],
                  counters: [activity, n, ...]} (values as strings)
REPLY ok
]]
--#include flat_list
local flat = flat_reader("restore_codes")

local codes_key, batches_key, counters_key = KEYS[1], KEYS[2], KEYS[3]
local step, payload = ARGV[1], cjson.decode(ARGV[2])

if step ~= "reset" and step ~= "more" then
  return redis.error_reply("restore_codes: unknown step " .. tostring(step))
end
if type(payload) ~= "table" then
  error("restore_codes: payload must be a JSON object")
end
local codes, batches = flat(payload.codes or {}, "codes", true), flat(payload.batches or {}, "batches", true)
local counters = flat(payload.counters or {}, "counters", true)
if step == "reset" then
  redis.call("DEL", codes_key, batches_key, counters_key)
end
for i = 1, #codes, 2 do
  redis.call("HSET", codes_key, codes[i], codes[i + 1])
end
for i = 1, #batches, 2 do
  redis.call("HSET", batches_key, batches[i], batches[i + 1])
end
for i = 1, #counters, 2 do
  redis.call("HSET", counters_key, counters[i], counters[i + 1])
end
return {"ok"}
