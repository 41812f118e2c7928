--#include lapsed_lock
-- shown_status: a coupon's status as a reader is told it now: a lapsed lock shows as available, an available
-- coupon past its validity as expired.
local function shown_status(record, now)
  local status = record.status
  if lock_lapsed(record, now) then
    status = "available"
  end
  if status == "available" and tonumber(record.valid_until) <= now then
    return "expired"
  end
  return status
end
