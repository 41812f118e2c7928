#!lua
--[[
put_codes: write a batch's codes (their keyed hashes) into one code bucket with what redeeming needs (the
activity, the window copied when the batch was made, the pack), or drop a voided batch's unredeemed codes (only
codes of that batch).
Idempotent: a code already present is left as it is.
KEYS[1] codes    hash   {c:n}:codes    code hash -> JSON {batch} (+ user, claim, answer, at once redeemed)
KEYS[2] batches  hash   {c:n}:batches  batch id -> JSON {activity, starts_at, ends_at, pack}
KEYS[3] seq      string {c:n}:seq      the partition's event sequence
KEYS[4] events   stream {c:n}:events   the partition's ledger stream
ARGV[1] now        unix seconds
ARGV[2] event_id   gateway-made
ARGV[3] batch_id
ARGV[4] batch      JSON {activity, starts_at, ends_at, pack} ("" to drop)
ARGV[5] action     "put" or "drop"
ARGV[6] hashes     the codes' hashes, joined by ","
REPLY ok written   codes written (put) or dropped (drop) now
EVENT codes_stored
EVENT codes_dropped
]]
--#include integer
local integer = integer_reader("put_codes")

local codes_key, batches_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, batch_id, batch, action = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if (action ~= "put" and action ~= "drop") or ARGV[6] == nil then
  error("put_codes: action must be put or drop, and all 6 arguments given")
end

local record = cjson.encode({batch = batch_id})
local changed = 0
for code_hash in string.gmatch(ARGV[6], "[^,]+") do
  if action == "put" then
    changed = changed + redis.call("HSETNX", codes_key, code_hash, record)
  else
    local held = redis.call("HGET", codes_key, code_hash)
    local code = held and cjson.decode(held)
    if code and code.batch == batch_id and code.user == nil then
      changed = changed + redis.call("HDEL", codes_key, code_hash)
    end
  end
end
if action == "put" then
  redis.call("HSET", batches_key, batch_id, batch)
end
local seq = redis.call("INCR", seq_key)
if action == "put" then
  redis.call("XADD", events_key, "*",
    "type", "codes_stored", "v", 2, "id", event_id, "seq", seq, "at", now, "batch", batch_id, "count", changed)
else
  redis.call("XADD", events_key, "*",
    "type", "codes_dropped", "v", 2, "id", event_id, "seq", seq, "at", now, "batch", batch_id, "count", changed)
end
return {"ok", changed}
