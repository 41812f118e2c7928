-- flat_list: a restore script's reader of the flat arrays in its payload ([id, ...], or [field, value, ...] when
-- even), naming the script in its error. Malformed ARGV fails here, before any write:
--   local flat = flat_reader("restore_codes")  ...  flat(payload.codes or {}, "codes", true)
local function flat_reader(script)
  return function(list, name, even)
    if type(list) ~= "table" then
      error(script .. ": " .. name .. " must be a JSON array")
    end
    for _, item in ipairs(list) do
      if type(item) ~= "string" and type(item) ~= "number" then
        error(script .. ": " .. name .. " must hold strings and numbers only")
      end
    end
    if even and #list % 2 ~= 0 then
      error(script .. ": " .. name .. " must hold pairs")
    end
    return list
  end
end
