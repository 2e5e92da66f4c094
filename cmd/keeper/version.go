package main

import (
	"fmt"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func versionString() string {
	s := "keeper " + version
	if bi, ok := debug.ReadBuildInfo(); ok {
		s += fmt.Sprintf(" (%s", bi.GoVersion)
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" {
				s += " " + kv.Value
			}
		}
		s += ")"
	}
	return s
}
