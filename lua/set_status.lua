#!lua
--[[
set_status: an operator pauses, resumes or ends an activity. Ended is final: any change to it is refused.
Pausing a paused activity or resuming an active one changes nothing and appends no event.
KEYS[1] config   hash   {a:X}:act     the activity's hot config (status)
KEYS[2] retired  string {a:X}:retired a retired partition's marker (read only when the config is missing)
KEYS[3] seq      string {a:X}:seq     the partition's event sequence
KEYS[4] events   stream {a:X}:events  the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] action      "pause", "resume" or "end"
REPLY ok status          the status after the change
REPLY replay status      already in that status; nothing written
REPLY not_found
REPLY state_conflict why the activity has ended, or the action does not apply to its status; why is "retired"
                         when the partition is retired (no config, its marker there): the gateway brings it back,
                         then changes it
EVENT status_changed
]]
--#include integer
local integer = integer_reader("set_status")

local config_key, retired_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, operator, activity_id, action = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local before = redis.call("HGET", config_key, "status")
if not before then
  if redis.call("EXISTS", retired_key) == 1 then
    return {"state_conflict", "retired"}
  end
  return {"not_found"}
end
if before == "ended" then
  return {"state_conflict"}
end
local after
if action == "pause" then
  after = "paused"
elseif action == "resume" then
  after = "active"
elseif action == "end" then
  after = "ended"
else
  return redis.error_reply("set_status: unknown action " .. tostring(action))
end
if after == before then
  return {"replay", before}
end
redis.call("HSET", config_key, "status", after)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "status_changed", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "before", cjson.encode({status = before}), "after", cjson.encode({status = after}))
return {"ok", after}
