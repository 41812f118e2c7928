#!lua
--[[
restore_finish: the last step of restoring a partition. Levels its seq with the ledger (at or above the highest
seq the ledger holds, never lowering it), makes sure the stream's consumer group exists, and appends the event
that records the restore (the audit is written from it).
KEYS[1] seq      string {p}:seq      the partition's event sequence
KEYS[2] events   stream {p}:events   the partition's ledger stream (its group has the stream's name)
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    who ran the restore
ARGV[4] at_least    the ledger's mark for the partition (0 when it has none)
ARGV[5] summary     JSON: what was restored (counts), for the audit
REPLY ok seq     the seq of the restored event
EVENT restored
]]
--#include integer
--#include consumer_group
local integer = integer_reader("restore_finish")

local seq_key, events_key = KEYS[1], KEYS[2]
local now, event_id, operator = integer(ARGV[1], "now"), ARGV[2], ARGV[3]
local at_least, summary = integer(ARGV[4], "at_least"), ARGV[5]
if summary == nil then
  error("restore_finish: all 5 arguments must be given")
end

local refused = ensure_group(events_key)
if refused then
  return refused
end
if tonumber(redis.call("GET", seq_key) or "0") < at_least then
  redis.call("SET", seq_key, at_least)
end
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "restored", "v", 2, "id", event_id, "seq", seq, "at", now, "by", operator, "after", summary)
return {"ok", seq}
