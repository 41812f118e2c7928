#!lua
--[[
code_settle: after a code was judged anything but invalid_code, take the attempt back; after a keyed success,
keep its answer for replays (and record it in the ledger, so restore can rebuild it).
KEYS[1] fails   zset   {w:n}:fails:u:<user> or {w:n}:fails:d:<device>   attempt id -> unix seconds
KEYS[2] idem    string {w:n}:idem:<digest>  the placeholder {w:n}:idem:- when no key
KEYS[3] seq     string {w:n}:seq       the partition's event sequence
KEYS[4] events  stream {w:n}:events    the partition's ledger stream
ARGV[1] now        unix seconds
ARGV[2] event_id   gateway-made
ARGV[3] attempt_id
ARGV[4] idem_key   "" when there is no answer to keep
ARGV[5] body_hash  32 hex characters
ARGV[6] idem_ttl   seconds the answer is kept
ARGV[7] answer     the success's answer JSON
REPLY ok
EVENT idempotency_recorded
]]
--#include integer
--#include idempotency_record
local integer = integer_reader("code_settle")

local fails_key, idem_key_name, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id, attempt_id = integer(ARGV[1], "now"), ARGV[2], ARGV[3]
local idem_key, body_hash, ttl, answer = ARGV[4], ARGV[5], integer(ARGV[6], "ttl"), ARGV[7]
if ttl <= 0 or answer == nil then
  error("code_settle: ttl must be positive, and all 7 arguments given")
end

redis.call("ZREM", fails_key, attempt_id)
if idem_key ~= "" and redis.call("SET", idem_key_name, idempotency_record(body_hash, answer), "NX", "EX", ttl) then
  local seq = redis.call("INCR", seq_key)
  redis.call("XADD", events_key, "*",
    "type", "idempotency_recorded", "v", 2, "id", event_id, "seq", seq, "at", now,
    "idem", idem_key_name, "idem_hash", body_hash, "answer", answer, "idem_expires", now + ttl)
end
return {"ok"}
