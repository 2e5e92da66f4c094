// Package configs holds only tests: they run what configs/ ships (the Helm
// chart, the container image, the alerting rules and the dashboard) through
// the real tool of each ecosystem.
package configs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// root is the repository root (tests run in configs/).
const root = ".."

var (
	toolsMu sync.Mutex
	tools   = map[string]string{}
)

// tool finds a pinned tool: $<env> (make test sets it to the binary it
// built), else bin/<name> at the repository root (make tools), else it is
// built once into the user cache from the package the Makefile pins in
// <NAME>_PKG (with the build tags of <NAME>_TAGS, if any), so that `go test
// ./configs/` works on its own.
func tool(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		return p
	}
	if p, err := filepath.Abs(filepath.Join(root, "bin", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	toolsMu.Lock()
	defer toolsMu.Unlock()
	if p := tools[name]; p != "" {
		return p
	}
	pkg := makefileVar(t, strings.ToUpper(name)+"_PKG")
	if pkg == "" {
		t.Fatalf("the Makefile pins no %s_PKG", strings.ToUpper(name))
	}
	args := []string{"install"}
	if tags := makefileVar(t, strings.ToUpper(name)+"_TAGS"); tags != "" {
		args = append(args, "-tags", tags)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "keeper-tools", strings.NewReplacer("/", "_", "@", "_").Replace(pkg))
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err != nil {
		t.Logf("building %s into %s (a few minutes, once; `make tools` builds it into bin/)", pkg, dir)
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go install %s: %v\n%s", pkg, err, out)
		}
	}
	tools[name] = bin
	return bin
}

// makefileVar reads `NAME := value` from the Makefile, where the tool
// versions are pinned once; "" when it has none.
func makefileVar(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*[:?]?=\s*(\S+)\s*$`).FindSubmatch(data)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// run runs a command and returns its stdout; a failure fails the test with
// both outputs.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %v\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}
