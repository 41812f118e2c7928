#!lua
--[[
restore_blocklist: write the blocklist as rebuilt from the ledger (restore). "reset" replaces the sets and the
entries with the payload's; "more" adds further entries. Each call bumps the version, so every gateway reloads
its copy. restore_finish then levels the partition's seq and appends the event that records the restore.
KEYS[1] users    set    {blocklist}:users    blocked user ids
KEYS[2] devices  set    {blocklist}:devices  blocked device ids
KEYS[3] entries  hash   {blocklist}:entries  "user:<id>" / "device:<id>" -> JSON {added_at, by}
KEYS[4] version  string {blocklist}:version  bumped on every change
ARGV[1] step     "reset" or "more"
ARGV[2] payload  JSON {users: [id, ...], devices: [id, ...], entries: [name, record JSON, ...]}
REPLY ok
]]
--#include flat_list
local flat = flat_reader("restore_blocklist")

local users_key, devices_key, entries_key, version_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local step, payload = ARGV[1], cjson.decode(ARGV[2])

if step ~= "reset" and step ~= "more" then
  return redis.error_reply("restore_blocklist: unknown step " .. tostring(step))
end
if type(payload) ~= "table" then
  error("restore_blocklist: payload must be a JSON object")
end
local users, devices = flat(payload.users, "users", false), flat(payload.devices, "devices", false)
local entries = flat(payload.entries, "entries", true)
if step == "reset" then
  redis.call("DEL", users_key, devices_key, entries_key)
end
for _, id in ipairs(users) do
  redis.call("SADD", users_key, id)
end
for _, id in ipairs(devices) do
  redis.call("SADD", devices_key, id)
end
for i = 1, #entries, 2 do
  redis.call("HSET", entries_key, entries[i], entries[i + 1])
end
redis.call("INCR", version_key)
return {"ok"}
