// Runs an Argo CD Lua health check the way Argo CD does (the object as the global `obj`, the
// script's returned table as the health), in fengari: a Lua 5.3 VM from npm.
// Usage: node argocd-health.mjs SCRIPT.lua < objects.json (a JSON array); prints one JSON line
// {"status": ..., "message": ...} per object.
import { readFileSync } from "node:fs";
import fengari from "fengari";

const { lua, lauxlib, lualib, to_luastring, to_jsstring } = fengari;
const script = readFileSync(process.argv[2], "utf8");
const objects = JSON.parse(readFileSync(0, "utf8"));

function push(L, v) {
  if (v === null || v === undefined) lua.lua_pushnil(L);
  else if (typeof v === "boolean") lua.lua_pushboolean(L, v);
  else if (typeof v === "number") Number.isInteger(v) ? lua.lua_pushinteger(L, v) : lua.lua_pushnumber(L, v);
  else if (typeof v === "string") lua.lua_pushstring(L, to_luastring(v));
  else if (Array.isArray(v)) {
    lua.lua_createtable(L, v.length, 0);
    v.forEach((x, i) => { push(L, x); lua.lua_rawseti(L, -2, i + 1); });
  } else {
    lua.lua_createtable(L, 0, Object.keys(v).length);
    for (const [k, x] of Object.entries(v)) { push(L, x); lua.lua_setfield(L, -2, to_luastring(k)); }
  }
}

for (const obj of objects) {
  const L = lauxlib.luaL_newstate();
  lualib.luaL_openlibs(L);
  push(L, obj);
  lua.lua_setglobal(L, to_luastring("obj"));
  if (lauxlib.luaL_dostring(L, to_luastring(script)) !== lua.LUA_OK) {
    console.error("lua error: " + to_jsstring(lua.lua_tostring(L, -1)));
    process.exit(1);
  }
  const field = (name) => {
    lua.lua_getfield(L, -1, to_luastring(name));
    const s = lua.lua_isnil(L, -1) ? null : to_jsstring(lua.lua_tostring(L, -1));
    lua.lua_pop(L, 1);
    return s;
  };
  console.log(JSON.stringify({ status: field("status"), message: field("message") }));
}
