#!lua
--[[
grant_call: the record of a keyed grant call (operator, activity, Idempotency-Key). "open" before any user is
granted: a new call is recorded with its body hash; the same body after the call finished replays its answer;
another body is refused. "close" after the call: stores the call's answer (every user's result), which a
retry replays whole, refusals included (the call itself succeeded).
KEYS[1] record   string {a:X}:idem:<digest>   "<body hash>|" while running, "<body hash>|<answer>" when done
KEYS[2] seq      string {a:X}:seq             the partition's event sequence
KEYS[3] events   stream {a:X}:events          the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] body_hash   32 hex characters
ARGV[6] ttl         seconds the record is kept
ARGV[7] step        "open" or "close"
ARGV[8] answer      the call's answer JSON (close only)
REPLY ok                    open: first call with this key, recorded; close: answer stored
REPLY replay answer         open: this call already finished; its answer
REPLY pending               open: this call started before and did not finish; go on (each granted user replays)
REPLY idempotency_conflict  open: this key was used with another body
EVENT grant_call_recorded
]]
local record_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3]
local now, event_id, operator, activity_id = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local body_hash, ttl, step, answer = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]

local held = redis.call("GET", record_key)
if step == "open" then
  if held then
    if string.sub(held, 1, 32) ~= body_hash then
      return {"idempotency_conflict"}
    end
    if #held > 33 then
      return {"replay", string.sub(held, 34)}
    end
    return {"pending"}
  end
  redis.call("SET", record_key, body_hash .. "|", "EX", ttl)
  return {"ok"}
end
if step ~= "close" then
  return redis.error_reply("grant_call: unknown step " .. tostring(step))
end
redis.call("SET", record_key, body_hash .. "|" .. answer, "EX", ttl)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "grant_call_recorded", "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "idem", record_key, "idem_hash", body_hash, "idem_expires", now + ttl, "answer", answer)
return {"ok"}
