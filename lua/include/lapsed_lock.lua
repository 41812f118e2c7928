-- lapsed_lock: a lock holds until its deadline; past it the coupon counts as available again (lazy expiry, no
-- timer: every script reads it so, and sweep_locks records it later).
local function lock_lapsed(record, now)
  return record.status == "locked" and tonumber(record.locked_until) <= now
end
