-- stored_value: a config value as the activity's hash keeps it. cjson reads numbers as doubles and tostring keeps
-- 14 digits: integers are written out whole.
local function as_stored(value)
  if type(value) == "number" then
    return string.format("%.0f", value)
  end
  return tostring(value)
end
