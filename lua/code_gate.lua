#!lua
--[[
code_gate: before a code is judged, count the attempt against the caller's failed-attempt limit (a rolling
window); the user's gate also answers an idempotent replay. The attempt is taken back (code_settle) unless the
code's answer is invalid_code, so parallel guesses cannot pass the limit. Attempts are rate-limit state, not
ledger state: no event (a guessing run would flood the stream), and a restore starts them afresh.
KEYS[1] fails  zset   {w:n}:fails:u:<user> or {w:n}:fails:d:<device>   attempt id -> unix seconds
KEYS[2] idem   string {w:n}:idem:<digest>  "<body hash>|<answer>"; the placeholder {w:n}:idem:- when no key
ARGV[1] now         unix seconds
ARGV[2] attempt_id  gateway-made
ARGV[3] limit       failed attempts allowed in the window (10)
ARGV[4] window      seconds (3600)
ARGV[5] idem_key    "" for none (the device's gate never has one)
ARGV[6] body_hash   32 hex characters
REPLY ok                       the attempt is counted
REPLY rate_limited retry_after seconds until the oldest failed attempt leaves the window; nothing counted
REPLY replay answer            the first success with this key (nothing counted)
REPLY idempotency_conflict     the key was used with another body (nothing counted)
]]
--#include integer
--#include replay_record
local integer = integer_reader("code_gate")

local fails_key, idem_key_name = KEYS[1], KEYS[2]
local now, attempt_id = integer(ARGV[1], "now"), ARGV[2]
local limit, window = integer(ARGV[3], "limit"), integer(ARGV[4], "window")
local idem_key, body_hash = ARGV[5], ARGV[6]
if window <= 0 or body_hash == nil then
  error("code_gate: window must be positive, and all 6 arguments given")
end

redis.call("ZREMRANGEBYSCORE", fails_key, "-inf", now - window)
if redis.call("ZCARD", fails_key) >= limit then
  local oldest = redis.call("ZRANGE", fails_key, 0, 0, "WITHSCORES")
  return {"rate_limited", math.max(1, tonumber(oldest[2]) + window - now)}
end
if idem_key ~= "" then
  local record = redis.call("GET", idem_key_name)
  if record then
    return replay_of(record, body_hash)
  end
end
redis.call("ZADD", fails_key, now, attempt_id)
redis.call("EXPIRE", fails_key, window)
return {"ok"}
