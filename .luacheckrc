-- luacheck (Debian's lua-check) on lua/, run by .ci/run. Redis runs scripts as Lua 5.1 with these globals.
std = "lua51"
read_globals = {"redis", "cjson", "cmsgpack", "bit", "struct", "KEYS", "ARGV"}
max_line_length = 120
