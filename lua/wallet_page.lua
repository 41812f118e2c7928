#!lua flags=no-writes
--[[
wallet_page: one page of a user's wallet, newest first, optionally of one status. An available coupon past its
validity shows as expired; a lock past its deadline shows as available (lazy expiry: no timer needed).
KEYS[1] coupons  hash   {w:n}:coupons     coupon id -> JSON record {user, activity, template, claim, valid_from,
                                          valid_until, status, version, order?, locked_until?}
KEYS[2] index    zset   {w:n}:u:<user>    the user's coupon ids (score 0; ids sort by creation time)
ARGV[1] now      unix seconds
ARGV[2] cursor   "" for the first page, else the last coupon id of the page before (one of the user's coupons)
ARGV[3] limit    1..100
ARGV[4] status   "" for every status, else available, locked, redeemed or expired
ARGV[5] vouched  "1" when the caller found the cursor among the user's coupons the ledger holds (one the retention
                 sweep removed from Redis): the page starts below it unchecked; "" otherwise
REPLY ok items next   items: the page as a JSON array of {coupon_id, template_id, activity_id, status, valid_from,
                      valid_until, order_id?}; next: the cursor of the next page, "" on the last
REPLY not_found       the cursor is none of the user's coupons here (and not vouched for)
]]
--#include shown_status
local coupons_key, index_key = KEYS[1], KEYS[2]
local now, cursor, limit, wanted, vouched = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local CHUNK = 100

if cursor ~= "" and vouched ~= "1" and not redis.call("ZSCORE", index_key, cursor) then
  return {"not_found"}
end

local items, upper = {}, cursor == "" and "+" or "(" .. cursor
local more = false
while true do
  local ids = redis.call("ZREVRANGEBYLEX", index_key, upper, "-", "LIMIT", 0, CHUNK)
  if #ids == 0 then
    break
  end
  local records = redis.call("HMGET", coupons_key, unpack(ids))
  for i, id in ipairs(ids) do
    if records[i] then
      local record = cjson.decode(records[i])
      local status = shown_status(record, now)
      if wanted == "" or status == wanted then
        if #items == limit then
          more = true
          break
        end
        local item = {
          coupon_id = id, template_id = record.template, activity_id = record.activity, status = status,
          valid_from = record.valid_from, valid_until = record.valid_until,
        }
        if record.order and status ~= "available" and status ~= "expired" then
          item.order_id = record.order
        end
        items[#items + 1] = cjson.encode(item)
      end
    end
  end
  if more or #ids < CHUNK then
    break
  end
  upper = "(" .. ids[#ids]
end
local next_cursor = ""
if more then
  next_cursor = cjson.decode(items[#items]).coupon_id
end
return {"ok", "[" .. table.concat(items, ",") .. "]", next_cursor}
