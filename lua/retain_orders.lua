#!lua
--[[
retain_orders: the retention sweep's pass over one wallet bucket's finished orders: each finished at or before the
cutoff leaves the orders hash, recorded so the ledger answers for it from then on. An order locked again since
(live) only leaves the index.
KEYS[1] orders    hash   {w:n}:orders    "<user>/<order>" -> JSON order (lock.lua)
KEYS[2] done      zset   {w:n}:done      finished order fields -> when they finished
KEYS[3] seq       string {w:n}:seq       the partition's event sequence
KEYS[4] events    stream {w:n}:events    the partition's ledger stream
ARGV[1] now       unix seconds
ARGV[2] event_id  gateway-made; the n-th removal of this pass is recorded as "<event_id>.<n>"
ARGV[3] cutoff    now - the retention: orders finished at or before it leave
ARGV[4] limit     most index entries looked at in one pass
REPLY ok removed more   more: 1 when the index gave `limit` entries (another pass may find more due), else 0
EVENT order_archived
]]
--#include integer
local integer = integer_reader("retain_orders")

local orders_key, done_key, seq_key, events_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, event_id = integer(ARGV[1], "now"), ARGV[2]
local cutoff, limit = integer(ARGV[3], "cutoff"), integer(ARGV[4], "limit")

local removed = 0
local due = redis.call("ZRANGEBYSCORE", done_key, "-inf", cutoff, "LIMIT", 0, limit)
for _, field in ipairs(due) do
  redis.call("ZREM", done_key, field)
  local raw = redis.call("HGET", orders_key, field)
  local order = raw and cjson.decode(raw)
  if order and order.status ~= "locked" then
    redis.call("HDEL", orders_key, field)
    removed = removed + 1
    local slash = string.find(field, "/", 1, true)
    local seq = redis.call("INCR", seq_key)
    redis.call("XADD", events_key, "*", "type", "order_archived", "v", 2, "id", event_id .. "." .. removed,
      "seq", seq, "at", now, "user", string.sub(field, 1, slash - 1), "order", string.sub(field, slash + 1),
      "status", order.status, "order_version", order.version)
  end
end
return {"ok", removed, #due == limit and 1 or 0}
