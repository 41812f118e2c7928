#!lua
--[[
put_activity: mirror an activity's definition from Postgres into its partition (an operators' change).
Creates the config if absent, with stock_left = stock and taken = 0; an existing config is left as it is, so
a repeated mirror (reconcile repairing a crash) changes nothing. Creates the partition stream's consumer group.
KEYS[1] config   hash   {a:X}:act     the activity's hot config
KEYS[2] allow    set    {a:X}:allow   the users allow-list
KEYS[3] retired  string {a:X}:retired a retired partition's marker: a retired activity is never mirrored afresh
KEYS[4] seq      string {a:X}:seq     the partition's event sequence
KEYS[5] events   stream {a:X}:events  the partition's ledger stream (its group has the stream's name)
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] config      JSON object of string/number fields: status, starts_at, ends_at, stock, per_user_limit,
                    per_device_limit, elig (JSON text or ""), pack (JSON text), face_per_pack
ARGV[6] allow_users JSON array of user ids ([] when the activity has no allow-list)
REPLY ok seq     mirrored; the event's seq
REPLY replay     already mirrored, or retired (its marker there: only a revival brings it back); nothing
                 written
EVENT activity_created
]]
--#include integer
--#include stored_value
--#include consumer_group
local integer = integer_reader("put_activity")

local config_key, allow_key, retired_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, event_id, operator, activity_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local config_json, allow_json = ARGV[5], ARGV[6]

if redis.call("EXISTS", config_key) == 1 or redis.call("EXISTS", retired_key) == 1 then
  return {"replay"}
end
local config, allow = cjson.decode(config_json), cjson.decode(allow_json)
if type(config) ~= "table" or type(allow) ~= "table" then
  error("put_activity: config must be a JSON object and allow_users a JSON array")
end
for name, value in pairs(config) do
  if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
    error("put_activity: config values must be strings or numbers")
  end
end
if integer(config.stock, "stock") < 0 then
  error("put_activity: stock must be 0 or more")
end
for _, id in ipairs(allow) do
  if type(id) ~= "string" then
    error("put_activity: allow_users must hold strings only")
  end
end
local fields = {}
for name, value in pairs(config) do
  if name ~= "stock" then
    fields[#fields + 1] = name
    fields[#fields + 1] = as_stored(value)
  end
end
-- The group first: the one write that may fail (the events key of another type) then leaves nothing behind.
local refused = ensure_group(events_key)
if refused then
  return refused
end
redis.call("HSET", config_key, "stock_left", as_stored(config.stock), "taken", 0, unpack(fields))
for i = 1, #allow, 1000 do
  redis.call("SADD", allow_key, unpack(allow, i, math.min(i + 999, #allow)))
end
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "activity_created", "v", 2, "id", event_id, "seq", seq, "at", now,
  "activity", activity_id, "by", operator, "before", "", "after", config_json, "allow", allow_json)
return {"ok", seq}
