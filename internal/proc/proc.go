// Package proc ends the child processes that keeper's tests, benchmarks and
// chaos harness start (redis-server, etcd, the collector, keeper itself):
// each by its own pid, asked first, then killed, and never waited for
// forever.
package proc

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// killWait is how long Stop waits for a process to end after SIGKILL
// before it reports the process as stuck (a test shortens it).
var killWait = 10 * time.Second

// Attr is what every child is started with: a process group of its own,
// so that a Ctrl-C of the test runner does not race the explicit stop, and
// SIGKILL when the process that started it dies, so that a crashed test
// or benchmark leaks no child.
func Attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// Stop sends sig to p and waits up to grace for done to close (whoever
// called p's Wait closes it), then kills p and waits up to 10 s more.
// SIGCONT goes first, so that a process paused with SIGSTOP acts on sig.
// With sig SIGKILL, grace does not matter. name says what p is in the
// error of a process that outlived SIGKILL.
func Stop(p *os.Process, done <-chan struct{}, sig syscall.Signal, grace time.Duration, name string) error {
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(sig)
	if sig != syscall.SIGKILL {
		select {
		case <-done:
			return nil
		case <-time.After(grace):
		}
		_ = p.Kill()
	}
	select {
	case <-done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.Pid)
	}
}

// LogTail is the last n lines of the log file at path (none when it cannot
// be read), for the error of a child that failed to start or exited.
func LogTail(path string, n int) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// Binary is an executable the tests and benchmarks run: the file named by
// the environment variable Env when it is set (`make` sets it to what it
// built once for the whole run), else what Build returns, built once per
// process.
type Binary struct {
	Env   string
	Build func() (string, error)

	once sync.Once
	path string
	err  error
}

// Path is the executable's path, or why there is none.
func (b *Binary) Path() (string, error) {
	if p := os.Getenv(b.Env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", b.Env, err)
		}
		return p, nil
	}
	b.once.Do(func() { b.path, b.err = b.Build() })
	return b.path, b.err
}
