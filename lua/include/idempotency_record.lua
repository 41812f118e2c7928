-- idempotency_record: what a keyed call keeps for its replays, "<body hash>|<answer>": the 32 hex characters of
-- the request body's hash and the answer it got (a keyed grant call's answer is "" while the call is open).
-- replay_record reads it.
local function idempotency_record(body_hash, answer)
  return body_hash .. "|" .. answer
end
