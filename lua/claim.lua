#!lua
--[[
claim: take one pack of an activity for a user (a user's claim, or an operator's grant) and record the claim.
Checks, in the contract's order: idempotent replay, blocklist verdict, status and window, stock, eligibility,
limits. A refusal writes nothing; a sold-out claim costs one HMGET.
KEYS[1] config      hash   {a:X}:act      status, starts_at, ends_at, stock_left, taken, limits, elig, pack
KEYS[2] user_counts hash   {a:X}:users    user id -> packs taken
KEYS[3] dev_counts  hash   {a:X}:devices  device id -> packs taken
KEYS[4] allow       set    {a:X}:allow    the users allow-list (read only when elig.users)
KEYS[5] idem        string {a:X}:idem:<digest>  "<body hash>|<answer>"; the placeholder {a:X}:idem:- when no key
KEYS[6] retired     string {a:X}:retired  a retired partition's marker (read only when the config is missing)
KEYS[7] seq         string {a:X}:seq      the partition's event sequence
KEYS[8] events      stream {a:X}:events   the partition's ledger stream
ARGV[1] now         unix seconds
ARGV[2] activity_id
ARGV[3] user_id
ARGV[4] device_id   "" for a grant
ARGV[5] channel     "" when absent
ARGV[6] blocked     "1" when the gateway's blocklist names the user or device
ARGV[7] idem_key    "" when the request has no Idempotency-Key
ARGV[8] body_hash   32 hex characters
ARGV[9] idem_ttl    seconds the answer is kept
ARGV[10] claim_id   gateway-made
ARGV[11] event_id   gateway-made
ARGV[12] reg        registration time from the token, "" when absent
ARGV[13] orders     completed orders from the token, "" when absent
ARGV[14] tags       the token's tags joined by \31, "" when absent
ARGV[15] mode       "claim" or "grant" (grant: no window, no eligibility, no device limit)
ARGV[16] operator   the operator's name for a grant, "" for a claim
The event's ordinal is the activity's taken count after this claim: the pack's place in the activity's sales,
which the ledger holds unique per activity.
Coupon ids are the claim id, a dot and the coupon's place in the pack (1..n): made by the gateway, never by Redis.
REPLY ok answer       answer is the JSON body {claim_id, coupons:[{coupon_id, template_id, valid_from, valid_until}]}
REPLY replay answer   the stored answer of the first success with this key
REPLY idempotency_conflict
REPLY blocked
REPLY not_found
REPLY ended why      why is "retired" when the partition is retired (no config, its marker there): for a
                    claim the activity has ended as any other; a grant brings the partition back, then again
REPLY paused
REPLY not_started
REPLY sold_out
REPLY not_eligible
REPLY limit_reached
EVENT claimed
]]
--#include integer
--#include replay_record
--#include idempotency_record
--#include pack_answer
local integer = integer_reader("claim")
local function optional_integer(value, name)
  if value == "" then
    return nil
  end
  return integer(value, name)
end

local config_key, user_counts_key, dev_counts_key = KEYS[1], KEYS[2], KEYS[3]
local allow_key, idem_key_name, retired_key, seq_key, events_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = integer(ARGV[1], "now")
local activity_id, user_id, device_id, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local blocked = ARGV[6] == "1"
local idem_key, body_hash, idem_ttl = ARGV[7], ARGV[8], integer(ARGV[9], "idem_ttl")
local claim_id, event_id = ARGV[10], ARGV[11]
local reg, orders = optional_integer(ARGV[12], "reg"), optional_integer(ARGV[13], "orders")
local tags_joined, mode, operator = ARGV[14], ARGV[15], ARGV[16]
local is_grant = mode == "grant"
if idem_ttl <= 0 or (mode ~= "claim" and mode ~= "grant") or operator == nil then
  error("claim: idem_ttl must be positive, mode claim or grant, and all 16 arguments given")
end

if idem_key ~= "" then
  local record = redis.call("GET", idem_key_name)
  if record then
    return replay_of(record, body_hash)
  end
end

if blocked then
  return {"blocked"}
end

local head = redis.call("HMGET", config_key, "status", "starts_at", "ends_at", "stock_left")
local status = head[1]
if not status then
  if redis.call("EXISTS", retired_key) == 1 then
    return {"ended", "retired"}
  end
  return {"not_found"}
end
if status == "ended" then
  return {"ended"}
end
if status == "paused" then
  return {"paused"}
end
if not is_grant then
  if now < tonumber(head[2]) then
    return {"not_started"}
  end
  if now >= tonumber(head[3]) then
    return {"ended"}
  end
end
if tonumber(head[4]) <= 0 then
  return {"sold_out"}
end

local rest = redis.call("HMGET", config_key, "per_user_limit", "per_device_limit", "elig", "pack")
local per_user_limit, per_device_limit = tonumber(rest[1]), tonumber(rest[2])

local function has_any_tag(wanted)
  if tags_joined == "" then
    return false
  end
  local mine = {}
  for tag in string.gmatch(tags_joined, "[^\31]+") do
    mine[tag] = true
  end
  for _, tag in ipairs(wanted) do
    if mine[tag] then
      return true
    end
  end
  return false
end

local function eligible(rules)
  if rules.new_within_days and (reg == nil or reg < now - rules.new_within_days * 86400) then
    return false
  end
  if rules.first_order and (orders == nil or orders ~= 0) then
    return false
  end
  if rules.min_orders and (orders == nil or orders < rules.min_orders) then
    return false
  end
  if rules.tags and not has_any_tag(rules.tags) then
    return false
  end
  if rules.users and redis.call("SISMEMBER", allow_key, user_id) == 0 then
    return false
  end
  return true
end

if not is_grant and rest[3] and rest[3] ~= "" and not eligible(cjson.decode(rest[3])) then
  return {"not_eligible"}
end

local user_taken = tonumber(redis.call("HGET", user_counts_key, user_id) or "0")
if user_taken >= per_user_limit then
  return {"limit_reached"}
end
local check_device = not is_grant and device_id ~= "" and per_device_limit > 0
if check_device and tonumber(redis.call("HGET", dev_counts_key, device_id) or "0") >= per_device_limit then
  return {"limit_reached"}
end

local answer = pack_answer(claim_id, rest[4], now)

redis.call("HINCRBY", config_key, "stock_left", -1)
local ordinal = redis.call("HINCRBY", config_key, "taken", 1)
redis.call("HINCRBY", user_counts_key, user_id, 1)
if device_id ~= "" then
  redis.call("HINCRBY", dev_counts_key, device_id, 1)
end
local idem_record, idem_expires = "", ""
if idem_key ~= "" then
  idem_record = idem_key_name
  redis.call("SET", idem_key_name, idempotency_record(body_hash, answer), "EX", idem_ttl)
  idem_expires = tostring(now + idem_ttl)
end
local seq = redis.call("INCR", seq_key)
redis.call("XADD", events_key, "*",
  "type", "claimed", "v", 2, "id", event_id, "seq", seq, "at", now,
  "activity", activity_id, "claim_id", claim_id, "user", user_id, "device", device_id, "channel", channel,
  "mode", mode, "by", operator, "answer", answer, "ordinal", ordinal,
  "idem", idem_record, "idem_hash", body_hash, "idem_expires", idem_expires)
return {"ok", answer}
