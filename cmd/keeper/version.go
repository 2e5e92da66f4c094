package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and revision are set by `make` with -ldflags "-X main.version=...
// -X main.revision=...": git describe and the commit it built. Without them
// (go build, go install) the build info fills them in: the module version
// ("(devel)" for a checkout, the tag for go install ...@vX) and the VCS
// revision when the build stamped one.
var (
	version  = ""
	revision = ""
)

// buildVersion is what `keeper version` reports.
type buildVersion struct {
	Version, Revision, Go, Platform string
	Modified                        bool
}

func currentVersion() buildVersion {
	v := buildVersion{Version: version, Revision: revision, Go: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" {
			v.Version = bi.Main.Version
		}
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				if v.Revision == "" {
					v.Revision = kv.Value
				}
			case "vcs.modified":
				v.Modified = kv.Value == "true"
			}
		}
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	if v.Revision == "" {
		v.Revision = "unknown"
	}
	return v
}

// versionString is one line: keeper v1.2.3 commit 0123abc go1.26.8 linux/amd64.
func versionString() string {
	v := currentVersion()
	rev := v.Revision
	if v.Modified {
		rev += "+modified"
	}
	return fmt.Sprintf("keeper %s commit %s %s %s", v.Version, rev, v.Go, v.Platform)
}
