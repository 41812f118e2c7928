#!lua
--[[
restore_activity: write an activity partition's state as rebuilt from the ledger (restore). "reset" replaces
the config, the per-user and per-device counts, the allow-list and the code batches with the payload's; "more"
adds further counts, allow-list members and batches (a large activity arrives in parts). "reset" deletes a
retired partition's marker too (restore rebuilds a retired partition only when the ledger holds changes after its
retirement). restore_finish then levels the partition's seq and appends the event that records the restore.
KEYS[1] config   hash   {a:X}:act      the activity's hot config
KEYS[2] users    hash   {a:X}:users    user id -> packs taken
KEYS[3] devices  hash   {a:X}:devices  device id -> packs taken
KEYS[4] allow    set    {a:X}:allow    the users allow-list
KEYS[5] batches  hash   {a:X}:batches  code batch id -> packs reserved, or "void"
KEYS[6] retired  string {a:X}:retired  a retired partition's marker
ARGV[1] step     "reset" or "more"
ARGV[2] payload  JSON {config: [field, value, ...], users: [id, n, ...], devices: [id, n, ...], allow: [id, ...],
                 batches: [id, n or "void", ...]} (values as strings; config only with "reset")
REPLY ok
]]
--#include flat_list
local flat = flat_reader("restore_activity")

local config_key, users_key, devices_key, allow_key, batches_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local retired_key = KEYS[6]
local step, payload = ARGV[1], cjson.decode(ARGV[2])

if step ~= "reset" and step ~= "more" then
  return redis.error_reply("restore_activity: unknown step " .. tostring(step))
end
if type(payload) ~= "table" then
  error("restore_activity: payload must be a JSON object")
end
local config = payload.config
if step == "reset" and type(config) ~= "table" then
  return redis.error_reply("restore_activity: reset needs the config")
end
local users, devices = flat(payload.users or {}, "users", true), flat(payload.devices or {}, "devices", true)
local allow, batches = flat(payload.allow or {}, "allow", false), flat(payload.batches or {}, "batches", true)

if step == "reset" then
  flat(config, "config", true)
  redis.call("DEL", config_key, users_key, devices_key, allow_key, batches_key, retired_key)
  for i = 1, #config, 2 do
    redis.call("HSET", config_key, config[i], config[i + 1])
  end
end
for i = 1, #users, 2 do
  redis.call("HSET", users_key, users[i], users[i + 1])
end
for i = 1, #devices, 2 do
  redis.call("HSET", devices_key, devices[i], devices[i + 1])
end
for i = 1, #allow do
  redis.call("SADD", allow_key, allow[i])
end
for i = 1, #batches, 2 do
  redis.call("HSET", batches_key, batches[i], batches[i + 1])
end
return {"ok"}
