-- consumer_group: make sure a partition's stream and its consumer group (named as the stream) exist. Returns
-- Redis's error when the group cannot be made (the key holds another type), nothing when it exists.
local function ensure_group(events_key)
  local created = redis.pcall("XGROUP", "CREATE", events_key, events_key, "0", "MKSTREAM")
  if type(created) == "table" and created.err and not string.find(created.err, "BUSYGROUP") then
    return created
  end
end
