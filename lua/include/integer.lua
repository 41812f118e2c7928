-- integer: a script's reader of whole-number arguments, naming the script in its error. Malformed ARGV fails here,
-- before any write:  local integer = integer_reader("claim")  ...  integer(ARGV[1], "now")
local function integer_reader(script)
  return function(value, name)
    local n = tonumber(value)
    if not n or n % 1 ~= 0 or n > 2^53 or n < -2^53 then
      error(script .. ": " .. name .. " must be an integer, not " .. tostring(value))
    end
    return n
  end
end
