#!lua
--[[
grant_call: record a keyed grant call (operator, activity, Idempotency-Key) with the hash of its body, so a
retry with another body is refused before any user is granted. Each user's grant keeps its own record (in the
claim script), which is what a retry replays.
KEYS[1] record   string {a:X}:idem:<digest>   the call's body hash
KEYS[2] seq      string {a:X}:seq             the partition's event sequence
KEYS[3] events   stream {a:X}:events          the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] body_hash   32 hex characters
ARGV[6] ttl         seconds the record is kept
REPLY ok                    first call with this key; recorded
REPLY replay                the same call again
REPLY idempotency_conflict  this key was used with another body
EVENT grant_call_recorded
]]
local record_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local now, event_id, operator, activity_id = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local body_hash, ttl = ARGV[5], tonumber(ARGV[6])

local held = redis.call("GET", record_key)
if held then
  if held ~= body_hash then
    return {"idempotency_conflict"}
  end
  return {"replay"}
end
redis.call("SET", record_key, body_hash, "EX", ttl)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "grant_call_recorded", "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "idem", record_key, "idem_hash", body_hash, "idem_expires", now + ttl)
return {"ok"}
