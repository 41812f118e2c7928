-- luacheck (Debian's lua-check) on lua/, run by .ci/run. Redis runs scripts as Lua 5.1 with these globals.
std = "lua51"
read_globals = {"redis", "cjson", "cmsgpack", "bit", "struct", "KEYS", "ARGV"}
max_line_length = 120

-- The local functions the fragments in lua/include define (tests/lua/test_includes.py keeps this list whole).
-- In lua/ a script names them below its "--#include <fragment>" lines, which are comments here: the loader puts the
-- fragment there. Each script's assembled source is checked too (by that test), where they are locals and a name
-- used without its include is an undefined variable. A fragment may offer a function a script does not use.
local fragment_functions = {
  "as_stored", "checkout_fields", "coupon_of", "ensure_group", "find_order", "flat_reader", "idempotency_record",
  "integer_reader", "lock_lapsed", "order_field_of", "pack_answer", "replay_of", "shown_status", "still_open",
}
files["lua"] = {read_globals = fragment_functions}
ignore = {}
for _, name in ipairs(fragment_functions) do
  ignore[#ignore + 1] = "211/" .. name
end
