// Package otelcol starts and stops a real OpenTelemetry Collector
// (bin/otelcol-keeper, built by `make collector` from
// configs/otelcol/builder.yaml) on free loopback ports, and scrapes the
// Prometheus endpoint it exposes. End-to-end tests of keeper's metrics use it
// so that what they check is what an operator's Prometheus would see.
//
// It is one file of about 620 lines: the collector's config, its process
// and the parser of its scrape are only ever used together.
package otelcol

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/proc"
)

const (
	// DefaultBinary is the collector built by `make collector`, relative to
	// the repository root.
	DefaultBinary = "bin/otelcol-keeper"
	// DefaultConfigFile is keeper's collector pipeline, relative to the
	// repository root.
	DefaultConfigFile = "configs/otelcol/collector.yaml"
	// BinaryEnv overrides DefaultBinary; `make test` sets it.
	BinaryEnv = "OTELCOL_BIN"

	module = "github.com/keeperhq/keeper"
)

// Config describes the collector to start. Zero values take the defaults
// documented on each field.
type Config struct {
	// Binary is the collector executable; default $OTELCOL_BIN, else
	// bin/otelcol-keeper under the repository root found by walking up from
	// the working directory.
	Binary string
	// ConfigFile is the collector configuration; default
	// configs/otelcol/collector.yaml under the repository root. It must take
	// its listen addresses from the KEEPER_OTELCOL_* variables, as that file
	// does.
	ConfigFile string
	// Overlays are further config files the collector merges over
	// ConfigFile, in order (its --config may be repeated): a test adds TLS
	// to the receiver this way without a second copy of the pipeline.
	Overlays []string
	// MetricExpiration is how long the Prometheus exporter keeps a series
	// that receives no update; default the config file's own (30s in
	// collector.yaml). Tests that move shards set it to a few export
	// intervals so that the old owner's series go away quickly.
	MetricExpiration time.Duration
	// StartTimeout bounds how long Start waits for the collector to listen;
	// default 30s, as a cold start on a loaded CI machine takes seconds.
	StartTimeout time.Duration
	// DefaultExporter adds a second Prometheus exporter to the pipeline,
	// configured with nothing but its endpoint, so every other setting is
	// the exporter's default (metric_expiration 5m, no
	// resource_to_telemetry_conversion). Tests scrape both (ScrapeDefault):
	// what keeper promises must hold for an operator's stock exporter too,
	// not only for configs/otelcol.
	DefaultExporter bool
}

// defaultExporterOverlay is the overlay DefaultExporter adds. Lists are
// replaced, not merged, so it names every exporter of the pipeline.
const defaultExporterOverlay = `exporters:
  prometheus/defaults:
    endpoint: ${env:KEEPER_OTELCOL_PROMETHEUS_DEFAULTS_ENDPOINT}
service:
  pipelines:
    metrics:
      exporters: [prometheus, prometheus/defaults, debug]
`

// Collector is a running collector process.
type Collector struct {
	otlpAddr      string
	promAddr      string
	telemetryAddr string
	defaultsAddr  string // "" without Config.DefaultExporter

	cmd     *exec.Cmd
	dir     string
	logPath string
	done    chan struct{}
	waitErr error
	once    sync.Once
	stopErr error
	client  *http.Client
}

// Start launches the collector and waits until its OTLP receiver accepts
// connections and its Prometheus endpoint answers.
func Start(ctx context.Context, cfg Config) (*Collector, error) {
	bin, err := resolveBinary(cfg.Binary)
	if err != nil {
		return nil, err
	}
	conf := cfg.ConfigFile
	if conf == "" {
		conf, err = repoFile(DefaultConfigFile)
		if err != nil {
			return nil, fmt.Errorf("otelcol config: %w", err)
		}
	}
	// The collector runs in its own temporary directory, so relative paths
	// must be resolved against ours first.
	if conf, err = filepath.Abs(conf); err != nil {
		return nil, fmt.Errorf("otelcol config: %w", err)
	}
	confs := []string{conf}
	for _, o := range cfg.Overlays {
		abs, err := filepath.Abs(o)
		if err != nil {
			return nil, fmt.Errorf("otelcol config overlay: %w", err)
		}
		confs = append(confs, abs)
	}
	for _, f := range confs {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("otelcol config: %w", err)
		}
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	dir, err := os.MkdirTemp("", "keeper-otelcol-")
	if err != nil {
		return nil, fmt.Errorf("otelcol temp dir: %w", err)
	}
	if cfg.DefaultExporter {
		overlay := filepath.Join(dir, "default-exporter.yaml")
		if err := os.WriteFile(overlay, []byte(defaultExporterOverlay), 0o600); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("otelcol default exporter overlay: %w", err)
		}
		confs = append(confs, overlay)
	}
	// Ports picked by the kernel can be taken by someone else before the
	// collector binds them; a few attempts keep a busy test run from failing.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		c := &Collector{
			dir:     dir,
			logPath: filepath.Join(dir, fmt.Sprintf("otelcol-%d.log", attempt)),
			done:    make(chan struct{}),
			client:  &http.Client{Timeout: 5 * time.Second},
		}
		lastErr = c.launch(ctx, bin, confs, cfg.MetricExpiration, timeout, cfg.DefaultExporter)
		if lastErr == nil {
			return c, nil
		}
		if ctx.Err() != nil || !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

var errAddrInUse = errors.New("address already in use")

func (c *Collector) launch(ctx context.Context, bin string, confs []string, expiry, timeout time.Duration, defaults bool) error {
	ports, err := loopback.Ports(4)
	if err != nil {
		return err
	}
	c.otlpAddr = loopback.Addr(ports[0])
	c.promAddr = loopback.Addr(ports[1])
	c.telemetryAddr = loopback.Addr(ports[2])
	if defaults {
		c.defaultsAddr = loopback.Addr(ports[3])
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		return fmt.Errorf("otelcol log file: %w", err)
	}
	defer logf.Close()

	var args []string
	for _, f := range confs {
		args = append(args, "--config", "file:"+f)
	}
	cmd := exec.Command(bin, args...)
	env := append(os.Environ(),
		"KEEPER_OTELCOL_OTLP_GRPC_ENDPOINT="+c.otlpAddr,
		"KEEPER_OTELCOL_PROMETHEUS_ENDPOINT="+c.promAddr,
		"KEEPER_OTELCOL_TELEMETRY_PORT="+strconv.Itoa(ports[2]),
	)
	if expiry > 0 {
		env = append(env, "KEEPER_OTELCOL_METRIC_EXPIRATION="+expiry.String())
	}
	if defaults {
		env = append(env, "KEEPER_OTELCOL_PROMETHEUS_DEFAULTS_ENDPOINT="+c.defaultsAddr)
	}
	cmd.Env = env
	cmd.Dir = c.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = proc.Attr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	c.cmd = cmd
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()

	deadline := time.Now().Add(timeout)
	for {
		if c.ready(ctx) {
			return nil
		}
		select {
		case <-c.done:
			tail := c.logTail(8)
			err := fmt.Errorf("otelcol exited during start (otlp %s, prometheus %s): %v: %s", c.otlpAddr, c.promAddr, c.waitErr, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return err
		case <-ctx.Done():
			_ = c.kill()
			return fmt.Errorf("otelcol start: %w", ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = c.kill()
			return fmt.Errorf("otelcol (otlp %s, prometheus %s) not ready within %s: %s", c.otlpAddr, c.promAddr, timeout, c.logTail(8))
		}
	}
}

// ready reports whether the pipeline accepts data and serves scrapes. The
// collector starts exporters before receivers, so an open OTLP port means the
// whole pipeline is up; the scrape check guards against another process
// having grabbed the Prometheus port.
func (c *Collector) ready(ctx context.Context) bool {
	conn, err := net.DialTimeout("tcp", c.otlpAddr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	_ = conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.PrometheusURL(), nil)
	if err != nil {
		return false
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// OTLPEndpoint is the OTLP/gRPC receiver's host:port (plaintext).
func (c *Collector) OTLPEndpoint() string { return c.otlpAddr }

// PrometheusURL is the URL of the Prometheus exporter's scrape endpoint.
func (c *Collector) PrometheusURL() string { return "http://" + c.promAddr + "/metrics" }

// Pid is the collector's process id.
func (c *Collector) Pid() int { return c.cmd.Process.Pid }

// Log returns the collector's output so far; tests print it on failure.
func (c *Collector) Log() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

// Stop terminates the collector by its pid and removes its temporary
// directory. It is safe to call more than once.
func (c *Collector) Stop() error {
	c.once.Do(func() {
		c.stopErr = c.kill()
		_ = os.RemoveAll(c.dir)
	})
	return c.stopErr
}

func (c *Collector) kill() error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	return proc.Stop(c.cmd.Process, c.done, syscall.SIGTERM, 10*time.Second, "otelcol")
}

func (c *Collector) logTail(n int) string {
	return strings.Join(proc.LogTail(c.logPath, n), " | ")
}

// Series is one sample of the Prometheus text exposition, named as PromQL
// sees it (histograms appear as their _bucket, _sum and _count series).
type Series struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// String renders the series in exposition syntax, labels sorted, for test
// failure messages.
func (s Series) String() string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(s.Name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, s.Labels[k])
	}
	b.WriteString("} ")
	b.WriteString(strconv.FormatFloat(s.Value, 'g', -1, 64))
	return b.String()
}

// DefaultURL is the scrape URL of the exporter that Config.DefaultExporter
// adds, or "" without it.
func (c *Collector) DefaultURL() string {
	if c.defaultsAddr == "" {
		return ""
	}
	return "http://" + c.defaultsAddr + "/metrics"
}

// Scrape fetches the Prometheus endpoint once and parses it.
func (c *Collector) Scrape(ctx context.Context) ([]Series, error) {
	return c.scrape(ctx, c.PrometheusURL())
}

// ScrapeDefault scrapes the exporter with default settings
// (Config.DefaultExporter).
func (c *Collector) ScrapeDefault(ctx context.Context) ([]Series, error) {
	if c.defaultsAddr == "" {
		return nil, errors.New("scrape: the collector was started without DefaultExporter")
	}
	return c.scrape(ctx, c.DefaultURL())
}

func (c *Collector) scrape(ctx context.Context, url string) ([]Series, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape request: %w", err)
	}
	// Plain text format 0.0.4: the parser below does not read protobuf or
	// OpenMetrics.
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("scrape %s: %s: %s", url, resp.Status, body)
	}
	series, err := ParseText(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	return series, nil
}

// Select returns the series called name whose labels include every pair in
// match.
func Select(all []Series, name string, match map[string]string) []Series {
	var out []Series
next:
	for _, s := range all {
		if s.Name != name {
			continue
		}
		for k, v := range match {
			if got, ok := s.Labels[k]; !ok || got != v {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

// ParseText parses the Prometheus text exposition format (0.0.4). Comments,
// HELP and TYPE lines are skipped; timestamps are ignored. It is written by
// hand so that the test helper does not follow prometheus/common's parser
// API, which changes between the versions other dependencies pull in.
func ParseText(r io.Reader) ([]Series, error) {
	var out []Series
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", lineNo, line, err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read exposition: %w", err)
	}
	return out, nil
}

func parseLine(line string) (Series, error) {
	s := Series{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ \t")
	if i <= 0 {
		return s, errors.New("no value")
	}
	s.Name = line[:i]
	rest := line[i:]
	if rest[0] == '{' {
		n, err := parseLabels(rest[1:], s.Labels)
		if err != nil {
			return s, err
		}
		rest = rest[1+n:]
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 || len(fields) > 2 {
		return s, errors.New("want value and optional timestamp after the labels")
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}

// parseLabels reads `name="value",...}` into into and returns how many bytes
// it consumed, the closing brace included.
func parseLabels(s string, into map[string]string) (int, error) {
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == ',') {
			i++
		}
		if i >= len(s) {
			return 0, errors.New("unterminated label set")
		}
		if s[i] == '}' {
			return i + 1, nil
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq <= 0 {
			return 0, errors.New("label without '='")
		}
		name := strings.TrimSpace(s[i : i+eq])
		i += eq + 1
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i >= len(s) || s[i] != '"' {
			return 0, fmt.Errorf("label %s: value not quoted", name)
		}
		i++
		var v strings.Builder
		for {
			if i >= len(s) {
				return 0, fmt.Errorf("label %s: unterminated value", name)
			}
			ch := s[i]
			if ch == '"' {
				i++
				break
			}
			if ch == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default: // \\ and \"
					v.WriteByte(s[i])
				}
				i++
				continue
			}
			v.WriteByte(ch)
			i++
		}
		into[name] = v.String()
	}
}

// parseValue accepts the exposition's +Inf, -Inf and NaN, which ParseFloat
// already understands.
func parseValue(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q: %w", s, err)
	}
	return v, nil
}

// resolveBinary applies the Binary default chain and turns a missing binary
// into an instruction, because CI builds it with `make collector` first and a
// developer running `go test` directly may not have.
func resolveBinary(bin string) (string, error) {
	if bin == "" {
		bin = os.Getenv(BinaryEnv)
	}
	if bin == "" {
		root, err := repoRoot()
		if err != nil {
			return "", fmt.Errorf("otelcol binary: %w; set %s or run `make collector` in the repo", err, BinaryEnv)
		}
		bin = filepath.Join(root, DefaultBinary)
	}
	var err error
	if strings.ContainsRune(bin, filepath.Separator) {
		bin, err = filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(bin)
		}
	} else {
		bin, err = exec.LookPath(bin)
	}
	if err != nil {
		return "", fmt.Errorf("otelcol binary %s missing: run `make collector` at the repo root to build it (or set %s): %w", bin, BinaryEnv, err)
	}
	return bin, nil
}

// repoFile is rel under the repository root.
func repoFile(rel string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, rel), nil
}

// repoRoot walks up from the working directory (a package directory under
// `go test`) to the directory whose go.mod declares keeper's module; the
// collector's generated go.mod under bin/ declares another and is skipped.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresModule(string(b), module) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod for %s above the working directory", module)
		}
		dir = parent
	}
}

func declaresModule(gomod, want string) bool {
	for _, line := range strings.Split(gomod, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == want
		}
	}
	return false
}

// TB is the part of testing.TB that StartTB needs; it keeps the testing
// package out of non-test binaries that import this package.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Failed() bool
	Cleanup(func())
}

// StartTB starts a collector for a test and stops it in Cleanup, printing
// its log if the test failed. A missing binary fails the test with the
// instruction to run `make collector`; it is never skipped.
func StartTB(t TB, cfg Config) *Collector {
	t.Helper()
	c, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start otelcol: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("otelcol log:\n%s", c.Log())
		}
		if err := c.Stop(); err != nil {
			t.Logf("stop otelcol: %v", err)
		}
	})
	return c
}
