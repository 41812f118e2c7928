#!lua
--[[
retire_activity: an ended activity's partition leaves Redis once its retention has passed (the worker's retire
sweep). Refused while the activity's end is after the cutoff, while the partition's seq is not the ledger's mark
(the ledger does not hold everything yet), or while its dead-letter stream holds entries. Otherwise every key of
the partition is deleted (its stream too: there is no event, the stream is what leaves) and the marker is written:
the seq at retirement, so the fence knows the partition is not behind and a revival carries the seq on. The
idempotency records ({a:X}:idem:*) are left to expire by themselves. A partition already retired (no config, the
marker there) answers replay and changes nothing.
KEYS[1] config   hash   {a:X}:act      the activity's hot config (ends_at)
KEYS[2] users    hash   {a:X}:users    user id -> packs taken
KEYS[3] devices  hash   {a:X}:devices  device id -> packs taken
KEYS[4] allow    set    {a:X}:allow    the users allow-list
KEYS[5] batches  hash   {a:X}:batches  code batch id -> packs reserved, or "void"
KEYS[6] retired  string {a:X}:retired  the marker: the seq at retirement
KEYS[7] dead     stream {a:X}:dead     the partition's dead letters
KEYS[8] seq      string {a:X}:seq      the partition's event sequence
KEYS[9] events   stream {a:X}:events   the partition's ledger stream (and its consumer group)
ARGV[1] now      unix seconds
ARGV[2] cutoff   unix seconds: the activity's ends_at must be at or before it (now minus the retention)
ARGV[3] mark     the ledger's mark for the partition (the highest seq it holds)
REPLY ok seq                 retired; the marker's seq
REPLY replay seq             retired before; the marker's seq
REPLY not_found              neither a config nor a marker: nothing to retire
REPLY state_conflict why     "not_ended": ends_at after the cutoff; "behind": the seq is not the ledger's mark;
                             "dead_letters": the dead-letter stream is not empty
]]
--#include integer
local integer = integer_reader("retire_activity")

local config_key, users_key, devices_key, allow_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batches_key, retired_key, dead_key, seq_key, events_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now, cutoff, mark = integer(ARGV[1], "now"), integer(ARGV[2], "cutoff"), integer(ARGV[3], "mark")
if cutoff > now then
  error("retire_activity: the cutoff must not be after now")
end

local ends_at = redis.call("HGET", config_key, "ends_at")
if not ends_at then
  local marker = redis.call("GET", retired_key)
  if marker then
    return {"replay", marker}
  end
  return {"not_found"}
end
if tonumber(ends_at) > cutoff then
  return {"state_conflict", "not_ended"}
end
local seq = tonumber(redis.call("GET", seq_key) or "0")
if seq ~= mark then
  return {"state_conflict", "behind"}
end
if redis.call("XLEN", dead_key) > 0 then
  return {"state_conflict", "dead_letters"}
end
redis.call("DEL", config_key, users_key, devices_key, allow_key, batches_key, seq_key, events_key, dead_key)
redis.call("SET", retired_key, seq)
return {"ok", seq}
