package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"go.opentelemetry.io/otel"
)

// startBare starts `keeper run` as `make run` does: no config file and no
// KEEPER_* or OTEL_* settings but env, so it starts its own redis-server and
// an embedded etcd, in a directory of its own; with args and a free health
// port, its stderr to stderr. It is stopped by SIGTERM (term, by its pid)
// when the test ends.
func startBare(t *testing.T, stderr io.Writer, env []string, args ...string) *keeperProc {
	t.Helper()
	bin, err := chaos.KeeperBinary()
	if err != nil {
		t.Fatal(err)
	}
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	k := &keeperProc{health: loopback.Addr(port), exited: make(chan error, 1)}
	k.cmd = exec.Command(bin, append([]string{"run", "--health_addr", k.health}, args...)...)
	k.cmd.Dir = t.TempDir()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEEPER_") && !strings.HasPrefix(kv, "OTEL_") {
			k.cmd.Env = append(k.cmd.Env, kv)
		}
	}
	k.cmd.Env = append(k.cmd.Env, env...)
	k.cmd.Stdout, k.cmd.Stderr = stderr, stderr
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.exited <- k.cmd.Wait() }()
	t.Cleanup(func() { k.stop() })
	return k
}

// stop ends k by SIGTERM within its shutdown budget; again, it does
// nothing.
func (k *keeperProc) stop() { _, _ = k.term(40 * time.Second) }

func (k *keeperProc) waitReady(t *testing.T) {
	t.Helper()
	poll.For(t, 90*time.Second, "keeper ready on "+k.health, func() (bool, string) {
		resp, err := http.Get("http://" + k.health + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, string(b)
	})
}

// jsonLines decodes every line of a log as one JSON object.
func jsonLines(t *testing.T, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON (%v): %q\nlog:\n%s", err, l, log)
		}
		out = append(out, m)
	}
	return out
}

// `make run` with nothing configured: no OTLP endpoint (neither
// metrics.endpoint nor OTEL_EXPORTER_OTLP_ENDPOINT) means no exporter, so
// no "metrics export failed" every interval for a collector nobody asked
// for; keeper says once at start where the metrics are, and they are there
// (the Prometheus endpoint `make run` turns on). A keeper given an
// endpoint where nothing listens, started beside it with the same export
// interval, does log the failure: the first keeper has had the time to fail
// too. Into a pipe, both log JSON lines.
func TestNoEndpointConfiguredNoExporter(t *testing.T) {
	ports, err := loopback.Ports(2)
	if err != nil {
		t.Fatal(err)
	}
	prom, dead := loopback.Addr(ports[0]), loopback.Addr(ports[1])
	env := []string{"OTEL_EXPORTER_OTLP_TIMEOUT=500"} // a failing export fails fast
	var bareLog, deadLog syncBuffer
	bare := startBare(t, &bareLog, env, "--metrics.export_interval", "100ms", "--metrics.prometheus_addr", prom)
	withDead := startBare(t, &deadLog, env, "--metrics.export_interval", "100ms", "--metrics.endpoint", "http://"+dead)
	bare.waitReady(t)
	withDead.waitReady(t)
	poll.For(t, 60*time.Second, "the keeper with an endpoint where nothing listens logging the failure", func() (bool, string) {
		return strings.Contains(deadLog.String(), "metrics export failed"), ""
	})
	url := "http://" + prom + "/metrics"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := otelcol.ParseText(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if m := otelcol.Select(ss, "target_info", map[string]string{"service_name": "keeper"}); len(m) != 1 {
		t.Fatalf("no keeper target_info at %s: %v", url, m)
	}
	bare.stop()
	withDead.stop()

	log := bareLog.String()
	if strings.Contains(log, "export failed") {
		t.Errorf("a keeper with no endpoint configured logged a failed export:\n%s", log)
	}
	notes := 0
	for _, l := range jsonLines(t, log) {
		if msg, _ := l["msg"].(string); strings.Contains(msg, url) {
			notes++
		}
	}
	if notes != 1 {
		t.Errorf("%d lines say where the metrics are (%s), want 1:\n%s", notes, url, log)
	}
	for _, l := range jsonLines(t, deadLog.String()) {
		if msg, _ := l["msg"].(string); strings.HasPrefix(msg, "metrics: no") {
			t.Errorf("a keeper with an endpoint says it has none: %q", msg)
		}
	}
}

// Without a Prometheus endpoint either, the note says how to get metrics.
func TestNoMetricsEndpointAtAllSaysHow(t *testing.T) {
	var log syncBuffer
	k := startBare(t, &log, nil)
	k.waitReady(t)
	k.stop()
	lines := jsonLines(t, log.String())
	notes := 0
	for _, l := range lines {
		if msg, _ := l["msg"].(string); strings.Contains(msg, "set metrics.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT") {
			notes++
		}
	}
	if notes != 1 || strings.Contains(log.String(), "export failed") {
		t.Errorf("%d notes, want 1, and no failed export:\n%s", notes, log.String())
	}
}

// log_format: auto is text on a terminal and JSON elsewhere; text and json
// force either.
func TestLogHandlerFormats(t *testing.T) {
	for _, c := range []struct {
		format string
		tty    bool
		json   bool
	}{{"auto", false, true}, {"auto", true, false}, {"json", true, true}, {"json", false, true},
		{"text", false, false}, {"text", true, false}} {
		var buf bytes.Buffer
		slog.New(logHandler(&buf, "info", c.format, c.tty)).Info("hello", "shard", "q#0")
		isJSON := json.Valid(bytes.TrimSpace(buf.Bytes()))
		if isJSON != c.json || !strings.Contains(buf.String(), "q#0") {
			t.Errorf("format %s, terminal %v: %q", c.format, c.tty, buf.String())
		}
	}
	if _, err := loadConfig("run", []string{"--log_format", "pretty"}, nil); err == nil || !strings.Contains(err.Error(), "log_format") {
		t.Errorf("log_format pretty: %v", err)
	}
}

// The libraries' own messages come out in keeper's format: the standard log
// package (the OpenTelemetry SDK's default error handler printed a bare
// "context canceled" into the JSON log at shutdown) and OpenTelemetry's
// error handler.
func TestLibraryLogsInKeepersFormat(t *testing.T) {
	prev := slog.Default()
	t.Cleanup(func() { slog.SetDefault(prev); stdlog.SetOutput(os.Stderr); newLogger("error") })
	var buf syncBuffer
	installLogger(slog.New(logHandler(&buf, "info", "json", false)))
	stdlog.Print("context canceled")
	otel.Handle(errors.New("export: boom"))
	lines := jsonLines(t, buf.String())
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{"context canceled", "export: boom"} {
		if !strings.Contains(fmt.Sprint(lines[i]), want) {
			t.Errorf("line %d %v lacks %q", i, lines[i], want)
		}
	}
}

// A real keeper on a terminal logs text lines (level=INFO msg=...), and JSON
// when told to.
func TestLogFormatOnATerminal(t *testing.T) {
	for _, c := range []struct {
		args []string
		json bool
	}{{nil, false}, {[]string{"--log_format", "json"}, true}} {
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatalf("open a pty: %v", err)
		}
		var out syncBuffer
		read := make(chan struct{})
		go func() {
			defer close(read)
			_, _ = io.Copy(&out, ptmx)
		}()
		k := startBare(t, tty, nil, c.args...)
		k.waitReady(t)
		k.stop()
		poll.For(t, 10*time.Second, "the last line (stopped, took ...) read", func() (bool, string) {
			return strings.Contains(out.String(), "took"), ""
		})
		_ = tty.Close()
		_ = ptmx.Close()
		<-read
		lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(out.String(), "\r\n", "\n")), "\n")
		for _, l := range lines {
			if isJSON := json.Valid([]byte(l)); isJSON != c.json {
				t.Errorf("%v: line %q (JSON %v, want %v)", c.args, l, isJSON, c.json)
			}
			if !c.json && !strings.Contains(l, "level=") {
				t.Errorf("%v: not a text log line: %q", c.args, l)
			}
		}
		t.Logf("%v: %d lines, first %q", c.args, len(lines), lines[0])
	}
}
