-- replay_record: what a held idempotency record (idempotency_record) answers a call with the same key.

-- Another body is refused; the same body gets the answer stored for it.
local function replay_of(record, body_hash)
  if string.sub(record, 1, 32) ~= body_hash then
    return {"idempotency_conflict"}
  end
  return {"replay", string.sub(record, 34)}
end

-- A keyed grant call's record while that call is open: the same body, no answer yet.
local function still_open(record, body_hash)
  return #record <= 33 and string.sub(record, 1, 32) == body_hash
end
