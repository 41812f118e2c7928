#!lua
--[[
grant_call: the record of a keyed grant call (operator, activity, Idempotency-Key). "open" before any user is
judged: a new call is recorded with its body hash; the same body after the call closed replays its answer; while
it is still open (a call running, or one that left users without a final result) the answer is pending with the
final results kept so far, so a retry judges only the other users; another body is refused. "settle" after users
were judged: keeps the final results given (a user's first final result stays), and when every user of the call
has one, closes the call: its answer, every result in the body's order, is stored for replays and recorded in
the ledger. A temporary (overloaded) or unknown result is never settled: a retry judges that user again, and the
claim script's per-user record (keyed by the same Idempotency-Key) answers it if its claim did run.
KEYS[1] record   string {a:X}:idem:<digest>   "<body hash>|" while open, "<body hash>|<answer>" once closed
KEYS[2] results  hash   {a:X}:grant:<digest>  a user's place in the body (1..n) -> its final result JSON, while
                                              open; never outlives the record
KEYS[3] seq      string {a:X}:seq             the partition's event sequence
KEYS[4] events   stream {a:X}:events          the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] event_id    gateway-made
ARGV[3] operator    the operator's name
ARGV[4] activity_id
ARGV[5] body_hash   32 hex characters
ARGV[6] ttl         seconds the record is kept
ARGV[7] step        "open" or "settle"
ARGV[8] users       settle: the number of users in the call (n); "" for open
ARGV[9] results     settle: final results, one per line, "<place> <result JSON>" (no newline in the JSON);
                    "" when there are none (and for open)
REPLY ok answer             open: first call with this key, recorded (answer ""); settle: every user has a final
                            result, the call is closed; its answer {"results":[...]}
REPLY replay answer         open or settle: the call was closed before; its answer
REPLY pending results       open: the call started before and is not closed; the final results kept so far as
                            "<place> <result JSON>" lines; settle: users without a final result remain
REPLY idempotency_conflict  open or settle: this key was used with another body
EVENT grant_call_recorded
]]
--#include integer
--#include replay_record
--#include idempotency_record
local integer = integer_reader("grant_call")

local record_key, results_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, operator, activity_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3], ARGV[4]
local body_hash, ttl, step = ARGV[5], integer(ARGV[6], "ttl"), ARGV[7]
if ttl <= 0 or ARGV[9] == nil or (step ~= "open" and step ~= "settle") then
  error("grant_call: ttl must be positive, step open or settle, and all 9 arguments given")
end

local held = redis.call("GET", record_key)
if held and not still_open(held, body_hash) then
  return replay_of(held, body_hash)
end

if step == "open" then
  if held then
    local kept, lines = redis.call("HGETALL", results_key), {}
    for i = 1, #kept, 2 do
      lines[#lines + 1] = kept[i] .. " " .. kept[i + 1]
    end
    return {"pending", table.concat(lines, "\n")}
  end
  redis.call("DEL", results_key)  -- left by a record that expired: not this call's
  redis.call("SET", record_key, idempotency_record(body_hash, ""), "EX", ttl)
  return {"ok", ""}
end

local users = integer(ARGV[8], "users")
if users < 1 then
  error("grant_call: users must be 1 or more")
end
local places, results = {}, {}
for line in string.gmatch(ARGV[9], "[^\n]+") do
  local place, result = string.match(line, "^(%d+) (.+)$")
  place = tonumber(place)
  if not place or place < 1 or place > users then
    error("grant_call: a result line must be \"<place 1.." .. users .. "> <result JSON>\"")
  end
  places[#places + 1], results[#results + 1] = place, result
end

if not held then  -- the record expired or was lost while the call ran: open it again
  redis.call("DEL", results_key)
  redis.call("SET", record_key, idempotency_record(body_hash, ""), "EX", ttl)
end
for i = 1, #places do
  redis.call("HSETNX", results_key, places[i], results[i])
end
if redis.call("HLEN", results_key) < users then
  local left = redis.call("PTTL", record_key)
  if left > 0 then
    redis.call("PEXPIRE", results_key, left)
  end
  return {"pending", ""}
end

local kept = redis.call("HGETALL", results_key)
local by_place = {}
for i = 1, #kept, 2 do
  by_place[tonumber(kept[i])] = kept[i + 1]
end
local answer = '{"results":[' .. table.concat(by_place, ",", 1, users) .. ']}'
redis.call("SET", record_key, idempotency_record(body_hash, answer), "EX", ttl)
redis.call("DEL", results_key)
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "grant_call_recorded", "v", 2, "id", event_id, "seq", seq, "at", now, "activity", activity_id, "by", operator,
  "idem", record_key, "idem_hash", body_hash, "idem_expires", now + ttl, "answer", answer)
return {"ok", answer}
