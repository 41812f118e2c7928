#!lua
--[[
restore_record: write one idempotency record as the ledger holds it (restore), with its expiry.
KEYS[1] record   string {a:X}:idem:<digest>   "<body hash>|<answer>" (or a code redeem's, {w:n}:idem:<digest>)
ARGV[1] value    "<body hash>|<answer>"
ARGV[2] expires  unix seconds the record expires at (in the future)
REPLY ok
]]
local record_key = KEYS[1]
redis.call("SET", record_key, ARGV[1], "EXAT", ARGV[2])
return {"ok"}
