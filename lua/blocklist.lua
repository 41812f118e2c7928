#!lua
--[[
blocklist: an operator adds users and devices to the blocklist, or removes them. Bumps the version every
gateway's in-process copy watches. Entries already in the wanted state are left alone; a call that changes
nothing appends no event.
KEYS[1] users    set    {blocklist}:users    blocked user ids
KEYS[2] devices  set    {blocklist}:devices  blocked device ids
KEYS[3] entries  hash   {blocklist}:entries  "user:<id>" / "device:<id>" -> JSON {added_at, by}
KEYS[4] version  string {blocklist}:version  bumped on every change
KEYS[5] seq      string {blocklist}:seq      the partition's event sequence
KEYS[6] events   stream {blocklist}:events   the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] action      "add" or "remove"
ARGV[5] users       JSON array of user ids
ARGV[6] devices     JSON array of device ids
REPLY ok changed     the number of entries added or removed
REPLY replay         nothing to change; nothing written
EVENT blocklist_changed
]]
--#include integer
local integer = integer_reader("blocklist")
local function ids(json, name)
  local list = cjson.decode(json)
  if type(list) ~= "table" then
    error("blocklist: " .. name .. " must be a JSON array of ids")
  end
  for _, id in ipairs(list) do
    if type(id) ~= "string" then
      error("blocklist: " .. name .. " must hold strings only")
    end
  end
  return list
end

local users_key, devices_key, entries_key = KEYS[1], KEYS[2], KEYS[3]
local version_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6]
local now, event_id, operator, action = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local users, devices = ids(ARGV[5], "users"), ids(ARGV[6], "devices")

if action ~= "add" and action ~= "remove" then
  return redis.error_reply("blocklist: unknown action " .. tostring(action))
end
local record = cjson.encode({added_at = now, by = operator})
local changed_users, changed_devices = {}, {}
if action == "add" then
  for _, id in ipairs(users) do
    if redis.call("SADD", users_key, id) == 1 then
      redis.call("HSET", entries_key, "user:" .. id, record)
      changed_users[#changed_users + 1] = id
    end
  end
  for _, id in ipairs(devices) do
    if redis.call("SADD", devices_key, id) == 1 then
      redis.call("HSET", entries_key, "device:" .. id, record)
      changed_devices[#changed_devices + 1] = id
    end
  end
else
  for _, id in ipairs(users) do
    if redis.call("SREM", users_key, id) == 1 then
      redis.call("HDEL", entries_key, "user:" .. id)
      changed_users[#changed_users + 1] = id
    end
  end
  for _, id in ipairs(devices) do
    if redis.call("SREM", devices_key, id) == 1 then
      redis.call("HDEL", entries_key, "device:" .. id)
      changed_devices[#changed_devices + 1] = id
    end
  end
end
local changed = #changed_users + #changed_devices
if changed == 0 then
  return {"replay"}
end
redis.call("INCR", version_key)
local seq = redis.call("INCR", seq_key)
local function list(values)
  return #values == 0 and "[]" or cjson.encode(values)
end
redis.call("XADD", events_key, "*",
  "type", "blocklist_changed", "v", 2, "id", event_id, "seq", seq, "at", now, "by", operator, "action", action,
  "users", list(changed_users), "devices", list(changed_devices))
return {"ok", changed}
