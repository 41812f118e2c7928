#!lua
--[[
restock: an operator adds (delta > 0) or removes (delta < 0) packs. Never below zero left; adding past the
budget (packs ever available, code batches' included, x face value of a pack > budget) is refused; an ended
activity is not changed.
KEYS[1] config   hash   {a:X}:act     stock_left, taken, reserved (packs held by code batches), status
KEYS[2] retired  string {a:X}:retired a retired partition's marker (read only when the config is missing)
KEYS[3] seq      string {a:X}:seq     the partition's event sequence
KEYS[4] events   stream {a:X}:events  the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] delta       a non-zero integer
ARGV[6] face        face value of one pack (from the activity's definition)
ARGV[7] budget      the activity's budget, "" when it has none
REPLY ok stock_left      the packs left after the change
REPLY not_found
REPLY state_conflict why ended, or removing more than is left; why is "retired" when the partition is retired
                         (no config, its marker there): the gateway brings it back, then changes it
REPLY over_budget        adding would let the face value out exceed the budget
EVENT stock_changed
]]
--#include integer
local integer = integer_reader("restock")

local config_key, retired_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, operator, activity_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local delta, face = integer(ARGV[5], "delta"), integer(ARGV[6], "face")
local budget = ARGV[7] ~= "" and integer(ARGV[7], "budget") or nil

local config = redis.call("HMGET", config_key, "status", "stock_left", "taken", "reserved")
if not config[1] then
  if redis.call("EXISTS", retired_key) == 1 then
    return {"state_conflict", "retired"}
  end
  return {"not_found"}
end
if config[1] == "ended" then
  return {"state_conflict"}
end
local left, taken, reserved = tonumber(config[2]), tonumber(config[3]), tonumber(config[4] or "0")
if left + delta < 0 then
  return {"state_conflict"}
end
if delta > 0 and budget and (taken + reserved + left + delta) * face > budget then
  return {"over_budget"}
end
local after = redis.call("HINCRBY", config_key, "stock_left", delta)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "stock_changed", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "before", string.format('{"stock_left":%d}', left), "after", string.format('{"stock_left":%d}', after),
  "delta", delta)
return {"ok", after}
