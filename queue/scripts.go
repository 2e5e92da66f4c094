package queue

import (
	"embed"
	"fmt"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/*.lua
var luaFS embed.FS

// scripts holds every Lua script of the native layout, each prefixed with
// lua/lib.lua. go-redis runs them by EVALSHA and loads them on NOSCRIPT.
type scripts struct {
	enqueue, pull, ack, nack, extend, inspect *redis.Script
	unlock, requeue, expire, trim, measure    *redis.Script
	probe, seed, drop                         *redis.Script
}

var nativeScripts = loadScripts()

func loadScripts() *scripts {
	lib := mustRead("lib")
	load := func(name string) *redis.Script {
		return redis.NewScript(lib + "\n-- " + name + ".lua\n" + mustRead(name))
	}
	return &scripts{
		enqueue: load("enqueue"), pull: load("pull"), ack: load("ack"), nack: load("nack"),
		extend: load("extend"), inspect: load("inspect"), unlock: load("unlock"),
		requeue: load("requeue"), expire: load("expire"), trim: load("trim"),
		measure: load("measure"), probe: load("probe"), seed: load("seed"), drop: load("drop"),
	}
}

func mustRead(name string) string {
	b, err := luaFS.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(fmt.Sprintf("embedded script %s: %v", name, err))
	}
	return string(b)
}
