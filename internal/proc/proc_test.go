package proc

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// start runs sleep, ignoring SIGTERM when told to, once it is ready for
// signals, and closes done when it has been waited for.
func start(t *testing.T, ignoreTerm bool) (*exec.Cmd, chan struct{}) {
	t.Helper()
	// An ignored signal stays ignored across exec: one process. It says
	// "ready" once its dispositions are set.
	script := "echo ready; exec sleep 60"
	if ignoreTerm {
		script = "trap '' TERM; echo ready; exec sleep 60"
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = Attr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read before Wait, which closes the pipe.
	line, rerr := bufio.NewReader(out).ReadString('\n')
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	if rerr != nil || line != "ready\n" {
		t.Fatalf("start: %q, %v", line, rerr)
	}
	return cmd, done
}

func exitSignal(cmd *exec.Cmd) syscall.Signal {
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0
	}
	return ws.Signal()
}

// A process that acts on the signal ends by it, within the grace.
func TestStopEndsByTheSignal(t *testing.T) {
	cmd, done := start(t, false)
	if err := Stop(cmd.Process, done, syscall.SIGTERM, time.Minute, "sleep"); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(cmd); sig != syscall.SIGTERM {
		t.Fatalf("ended by %v, want SIGTERM", sig)
	}
}

// A process that ignores it is killed once the grace is over.
func TestStopKillsAfterTheGrace(t *testing.T) {
	cmd, done := start(t, true)
	if err := Stop(cmd.Process, done, syscall.SIGTERM, 100*time.Millisecond, "sleep"); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(cmd); sig != syscall.SIGKILL {
		t.Fatalf("ended by %v, want SIGKILL", sig)
	}
}

// A paused process is continued, so that it acts on the signal.
func TestStopContinuesAPausedProcess(t *testing.T) {
	cmd, done := start(t, false)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := Stop(cmd.Process, done, syscall.SIGTERM, time.Minute, "sleep"); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(cmd); sig != syscall.SIGTERM {
		t.Fatalf("ended by %v, want SIGTERM", sig)
	}
}

// A done that never closes (nobody waits for the process) is reported,
// naming the process, instead of waited for forever.
func TestStopReportsAProcessThatOutlivesSIGKILL(t *testing.T) {
	defer func(w time.Duration) { killWait = w }(killWait)
	killWait = 100 * time.Millisecond
	cmd, _ := start(t, false)
	err := Stop(cmd.Process, make(chan struct{}), syscall.SIGKILL, 0, "sleep")
	if err == nil || !strings.Contains(err.Error(), "sleep (pid") {
		t.Fatalf("Stop = %v, want an error naming the process", err)
	}
}

func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("a\nb\nc\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]string{1: "c", 2: "b c", 3: "a b c", 10: "a b c"} {
		if got := strings.Join(LogTail(path, n), " "); got != want {
			t.Errorf("LogTail(%d) = %q, want %q", n, got, want)
		}
	}
	if got := LogTail(filepath.Join(t.TempDir(), "none"), 3); got != nil {
		t.Errorf("LogTail of no file = %q", got)
	}
}

// The environment wins; without it, Build runs once however often Path is
// asked.
func TestBinary(t *testing.T) {
	builds := 0
	b := &Binary{Env: "KEEPER_PROC_TEST_BIN", Build: func() (string, error) {
		builds++
		return "/built", nil
	}}
	t.Setenv("KEEPER_PROC_TEST_BIN", "")
	for range 3 {
		if p, err := b.Path(); p != "/built" || err != nil {
			t.Fatalf("Path = %q, %v", p, err)
		}
	}
	if builds != 1 {
		t.Fatalf("built %d times, want once", builds)
	}
	file := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(file, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEEPER_PROC_TEST_BIN", file)
	if p, err := b.Path(); p != file || err != nil {
		t.Fatalf("with the environment set: Path = %q, %v", p, err)
	}
	t.Setenv("KEEPER_PROC_TEST_BIN", file+".missing")
	if _, err := b.Path(); err == nil || !strings.Contains(err.Error(), "KEEPER_PROC_TEST_BIN") {
		t.Fatalf("a missing file: %v, want an error naming the variable", err)
	}
}
