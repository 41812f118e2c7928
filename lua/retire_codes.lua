#!lua
--[[
retire_codes: the code retention sweep's removal of one batch from one code bucket, once the batch's window ended
the retention ago (no code of it can be redeemed any more, and each redeemed one was redeemed before the end, so
its tombstone has lasted the retention): the given codes that belong to the batch leave, whatever their state (a
code of another batch is left as it is); with the bucket's last chunk (`last`), the batch's record too.
Idempotent: a repeat finds nothing to remove and appends nothing.
KEYS[1] codes    hash   {c:n}:codes    code hash -> JSON {batch} (+ user, claim, answer, activity, at once redeemed)
KEYS[2] batches  hash   {c:n}:batches  batch id -> JSON {activity, starts_at, ends_at, pack}
KEYS[3] seq      string {c:n}:seq      the partition's event sequence
KEYS[4] events   stream {c:n}:events   the partition's ledger stream
ARGV[1] now       unix seconds
ARGV[2] event_id  gateway-made
ARGV[3] cutoff    now - the retention: the batch's window must have ended at or before it
ARGV[4] batch_id
ARGV[5] last      "1" with the bucket's last chunk of the batch (its record leaves too), else "0"
ARGV[6] hashes    the codes' hashes, joined by ","
REPLY ok removed     codes removed now
REPLY state_conflict  the bucket's record of the batch ends after the cutoff: nothing removed
EVENT codes_retired
]]
--#include integer
local integer = integer_reader("retire_codes")

local codes_key, batches_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, cutoff = integer(ARGV[1], "now"), ARGV[2], integer(ARGV[3], "cutoff")
local batch_id, last, hashes = ARGV[4], ARGV[5], ARGV[6]
if (last ~= "1" and last ~= "0") or hashes == nil then
  error("retire_codes: last must be 1 or 0, and all 6 arguments given")
end

local raw = redis.call("HGET", batches_key, batch_id)
local batch = raw and cjson.decode(raw)
if batch and tonumber(batch.ends_at) > cutoff then
  return {"state_conflict"}
end

local removed = 0
for code_hash in string.gmatch(hashes, "[^,]+") do
  local held = redis.call("HGET", codes_key, code_hash)
  local code = held and cjson.decode(held)
  if code and code.batch == batch_id then
    removed = removed + redis.call("HDEL", codes_key, code_hash)
  end
end
local dropped = 0
if last == "1" then
  dropped = redis.call("HDEL", batches_key, batch_id)
end
if removed > 0 or dropped > 0 then
  local seq = redis.call("INCR", seq_key)
  redis.call("XADD", events_key, "*",
    "type", "codes_retired", "v", 2, "id", event_id, "seq", seq, "at", now, "batch", batch_id, "count", removed)
end
return {"ok", removed}
