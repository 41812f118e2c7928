#!lua
--[[
code_batch: take a code batch's packs from the activity's stock (reserve), or give back the packs of a batch a
crash left unfinished (void). Idempotent per batch: a batch is reserved at most once and voided at most once.
KEYS[1] config   hash   {a:X}:act      status, ends_at, stock_left, reserved (packs held by code batches)
KEYS[2] batches  hash   {a:X}:batches  batch id -> packs reserved, or "void"
KEYS[3] seq      string {a:X}:seq      the partition's event sequence
KEYS[4] events   stream {a:X}:events   the partition's ledger stream
ARGV[1] now         unix seconds (a reserve at or after ends_at is refused: its codes could never be redeemed)
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] batch_id
ARGV[6] count       the batch's packs
ARGV[7] action      "reserve" or "void"
REPLY ok stock_left     the packs left after the change
REPLY replay stock_left reserved (or voided) before: nothing written
REPLY not_found
REPLY state_conflict    reserve: ended (by status, or ends_at has passed), more packs than are left, or the
                        batch was voided
EVENT codes_reserved
EVENT codes_voided
]]
--#include integer
local integer = integer_reader("code_batch")

local config_key, batches_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, operator, activity_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local batch_id, count, action = ARGV[5], integer(ARGV[6], "count"), ARGV[7]
if count < 0 or (action ~= "reserve" and action ~= "void") then
  error("code_batch: count must be 0 or more and action reserve or void")
end

local config = redis.call("HMGET", config_key, "status", "stock_left", "ends_at")
if not config[1] then
  return {"not_found"}
end
local left = tonumber(config[2])
local held = redis.call("HGET", batches_key, batch_id)
local delta
if action == "reserve" then
  if held == "void" then
    return {"state_conflict"}
  end
  if held then
    return {"replay", left}
  end
  if config[1] == "ended" or now >= tonumber(config[3]) or count > left then
    return {"state_conflict"}
  end
  delta = -count
  redis.call("HSET", batches_key, batch_id, count)
else
  if held == "void" then
    return {"replay", left}
  end
  redis.call("HSET", batches_key, batch_id, "void")
  if not held then
    delta = 0  -- never reserved: recorded void so a late reserve cannot take its packs
  else
    delta = tonumber(held)
  end
end
local after = redis.call("HINCRBY", config_key, "stock_left", delta)
redis.call("HINCRBY", config_key, "reserved", -delta)
local seq = redis.call("INCR", seq_key)
local before_json, after_json = string.format('{"stock_left":%d}', left), string.format('{"stock_left":%d}', after)
if action == "reserve" then
  redis.call("XADD", events_key, "*",
    "type", "codes_reserved", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
    "batch", batch_id, "count", count, "before", before_json, "after", after_json)
else
  redis.call("XADD", events_key, "*",
    "type", "codes_voided", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
    "batch", batch_id, "count", count, "before", before_json, "after", after_json)
end
return {"ok", after}
