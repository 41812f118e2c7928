#!lua
--[[
revive_activity: bring a retired activity's partition back from the ledger before a late change (a grant or an
operator's change after its retirement). "part" adds per-user and per-device counts, allow-list members and code
batches (a large activity arrives in parts); "finish" writes the config, sets the seq at or above the marker and
the ledger's mark, makes sure the stream's consumer group exists, appends the event that records the revival and
deletes the marker: the partition is live from that call on. Both steps write only while the partition is retired
(the marker there, no config): once any gateway's finish made it live, a late part of another gateway (whose
counts would overwrite what claims changed since) writes nothing. While retired nothing changes what a revival
writes (no script changes a partition without its config), so parts written twice, or left by a revival that
died, hold the same values.
KEYS[1] config   hash   {a:X}:act      the activity's hot config
KEYS[2] users    hash   {a:X}:users    user id -> packs taken
KEYS[3] devices  hash   {a:X}:devices  device id -> packs taken
KEYS[4] allow    set    {a:X}:allow    the users allow-list
KEYS[5] batches  hash   {a:X}:batches  code batch id -> packs reserved, or "void"
KEYS[6] retired  string {a:X}:retired  the marker: the seq at retirement
KEYS[7] seq      string {a:X}:seq      the partition's event sequence
KEYS[8] events   stream {a:X}:events   the partition's ledger stream (its group has the stream's name)
ARGV[1] step      "part" or "finish"
ARGV[2] now       unix seconds
ARGV[3] event_id  gateway-made
ARGV[4] operator  whose change brought the activity back
ARGV[5] at_least  the ledger's mark for the partition
ARGV[6] payload   JSON {config: [field, value, ...] (finish only), users: [id, n, ...], devices: [id, n, ...],
                  allow: [id, ...], batches: [id, n or "void", ...]} (values as strings)
ARGV[7] summary   JSON object of integers: what was written (counts), for the audit
REPLY ok seq      part: seq is ""; finish: the seq of the event recording the revival
REPLY replay      the partition holds its config (revived already, or never retired): nothing written
REPLY not_found   neither config nor marker: not retired, nothing to revive; nothing written
EVENT restored
]]
--#include integer
--#include flat_list
--#include consumer_group
local integer = integer_reader("revive_activity")
local flat = flat_reader("revive_activity")

local config_key, users_key, devices_key, allow_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batches_key, retired_key, seq_key, events_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local step, now, event_id, operator = ARGV[1], integer(ARGV[2], "now"), ARGV[3], ARGV[4]
local at_least, payload, summary = integer(ARGV[5], "at_least"), cjson.decode(ARGV[6]), ARGV[7]
if (step ~= "part" and step ~= "finish") or summary == nil or type(payload) ~= "table" then
  error("revive_activity: step must be part or finish, payload a JSON object, and all 7 arguments given")
end
local users, devices = flat(payload.users or {}, "users", true), flat(payload.devices or {}, "devices", true)
local allow, batches = flat(payload.allow or {}, "allow", false), flat(payload.batches or {}, "batches", true)
local config = {}
if step == "finish" then
  config = flat(payload.config or {}, "config", true)
  if #config == 0 then
    error("revive_activity: finish needs the config")
  end
  if type(cjson.decode(summary)) ~= "table" then
    error("revive_activity: summary must be a JSON object")
  end
end

if redis.call("EXISTS", config_key) == 1 then
  return {"replay"}
end
local marker = redis.call("GET", retired_key)
if not marker then
  return {"not_found"}
end
-- The group first: the one write that may fail (the events key of another type) then leaves nothing behind.
if step == "finish" then
  local refused = ensure_group(events_key)
  if refused then
    return refused
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
if step == "part" then
  return {"ok", ""}
end
for i = 1, #config, 2 do
  redis.call("HSET", config_key, config[i], config[i + 1])
end
local seq = math.max(tonumber(redis.call("GET", seq_key) or "0"), tonumber(marker), at_least)
redis.call("SET", seq_key, seq)
seq = redis.call("INCR", seq_key)
redis.call("DEL", retired_key)
redis.call("XADD", events_key, "*",
  "type", "restored", "v", 2, "id", event_id, "seq", seq, "at", now, "by", operator, "after", summary)
return {"ok", seq}
