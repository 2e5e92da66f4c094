package main

import (
	"runtime"
	"strings"
	"testing"
)

func TestVersionString(t *testing.T) {
	// As `make` builds it: -X main.version and -X main.revision.
	version, revision = "v1.2.3", "0123abcd"
	t.Cleanup(func() { version, revision = "", "" })
	want := "keeper v1.2.3 commit 0123abcd " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	if got := versionString(); got != want && got != strings.Replace(want, "0123abcd", "0123abcd+modified", 1) {
		t.Fatalf("versionString() = %q, want %q", got, want)
	}
	// As go build or go test builds it: the build info's module version
	// ("(devel)", or a pseudo-version where the build stamps VCS data).
	version, revision = "", ""
	got := versionString()
	f := strings.Fields(got)
	if len(f) != 6 || f[0] != "keeper" || f[1] == "" || f[2] != "commit" || f[4] != runtime.Version() || f[5] != runtime.GOOS+"/"+runtime.GOARCH {
		t.Fatalf("versionString() = %q without ldflags", got)
	}
}
