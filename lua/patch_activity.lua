#!lua
--[[
patch_activity: an operator changes an activity's name (any time before it ends), or its window or limits
(only before it starts). The gateway has validated the values; the script checks the state and the window's
order against what it holds.
KEYS[1] config   hash   {a:X}:act     name, starts_at, ends_at, per_user_limit, per_device_limit, status
KEYS[2] retired  string {a:X}:retired a retired partition's marker (read only when the config is missing)
KEYS[3] seq      string {a:X}:seq     the partition's event sequence
KEYS[4] events   stream {a:X}:events  the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] changes     JSON object, a subset of: name, starts_at, ends_at, per_user_limit, per_device_limit
REPLY ok                 changed
REPLY not_found
REPLY state_conflict why ended, or the window or limits after the start; why is "retired" when the partition
                         is retired (no config, its marker there): the gateway brings it back, then changes it
REPLY invalid_request    the resulting window would not end after it starts
EVENT activity_patched
]]
--#include integer
--#include stored_value
local integer = integer_reader("patch_activity")

local config_key, retired_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, operator, activity_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local changes = cjson.decode(ARGV[5])
local NUMBERS = {starts_at = true, ends_at = true, per_user_limit = true, per_device_limit = true}
if type(changes) ~= "table" or next(changes) == nil then
  error("patch_activity: changes must be a JSON object with at least one field")
end
for name, value in pairs(changes) do
  if name == "name" then
    if type(value) ~= "string" then
      error("patch_activity: name must be a string")
    end
  elseif NUMBERS[name] then
    integer(value, name)
  else
    error("patch_activity: " .. tostring(name) .. " cannot be changed")
  end
end

local current = redis.call("HMGET", config_key, "status", "starts_at", "ends_at")
if not current[1] then
  if redis.call("EXISTS", retired_key) == 1 then
    return {"state_conflict", "retired"}
  end
  return {"not_found"}
end
if current[1] == "ended" then
  return {"state_conflict"}
end
local touches_hot = false
for name, _ in pairs(changes) do
  if name ~= "name" then
    touches_hot = true
  end
end
if touches_hot and now >= tonumber(current[2]) then
  return {"state_conflict"}
end
local starts_at = tonumber(changes.starts_at or current[2])
local ends_at = tonumber(changes.ends_at or current[3])
if ends_at <= starts_at then
  return {"invalid_request"}
end
local before, after, fields = {}, {}, {}
for name, value in pairs(changes) do
  local stored = as_stored(value)
  local held = redis.call("HGET", config_key, name)
  if held and name ~= "name" then
    held = tonumber(held)
  end
  before[name] = held or cjson.null
  after[name] = value
  fields[#fields + 1] = name
  fields[#fields + 1] = stored
end
redis.call("HSET", config_key, unpack(fields))
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "activity_patched", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "before", cjson.encode(before), "after", cjson.encode(after))
return {"ok"}
