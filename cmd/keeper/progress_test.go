package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/faultproxy"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// runOn runs keeper with args, stdout into a pipe, and stderr on a
// pseudo-terminal when tty is set (into a pipe otherwise). It returns both
// outputs and the exit error; the process is killed (by its pid) if it
// runs for more than 8 minutes.
func runOn(t *testing.T, tty bool, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin, err := chaos.KeeperBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	if !tty {
		cmd.Stderr = &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		return out.String(), errOut.String(), err
	}
	ptmx, term, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer ptmx.Close()
	defer term.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 250}); err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = term
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The test keeps its end of the terminal open, and writes a mark after
	// the process exited: what the process wrote is all read when the mark
	// is (reading until the terminal hangs up can lose the last bytes).
	const mark = "-- end of output --"
	read := make(chan struct{})
	go func() {
		defer close(read)
		b := make([]byte, 32<<10)
		for !strings.Contains(errOut.String(), mark) {
			n, err := ptmx.Read(b)
			errOut.Write(b[:n])
			if err != nil {
				return
			}
		}
	}()
	err = cmd.Wait()
	if _, werr := term.Write([]byte(mark)); werr != nil {
		t.Fatal(werr)
	}
	<-read
	return out.String(), strings.TrimSuffix(errOut.String(), mark), err
}

// shown is what a terminal shows after out: each line as left by its last
// redraw ("\r", erase line), with the terminal's "\r\n" line ends undone.
func shown(out string) []string {
	lines := strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n")
	for i, l := range lines {
		if k := strings.LastIndex(l, "\r\x1b[K"); k >= 0 {
			l = l[k+len("\r\x1b[K"):]
		}
		lines[i] = strings.TrimPrefix(l, "\x1b[K")
	}
	return lines
}

func hasLine(lines []string, re string) bool {
	r := regexp.MustCompile(re)
	for _, l := range lines {
		if r.MatchString(l) {
			return true
		}
	}
	return false
}

// keeper queue audit of a large queue shows on a terminal which shard it is
// at and how many messages it has read; with --json into a pipe it prints
// the JSON only.
//
// It also runs for as long as the queue takes: the audit read here goes
// through a proxy that delays every round trip by 2.4 s (within the client's
// 3 s read timeout), so 10 shards take some 40 s, past the 30 s deadline
// every `keeper queue` command had, which cut the audit of a large queue
// (4,000,000 messages over 16 shards took 41 s here) with "context deadline
// exceeded". KEEPER_TEST_AUDIT_MSGS and KEEPER_TEST_AUDIT_SHARDS audit a
// larger queue without the proxy.
func TestProgressQueueAudit(t *testing.T) {
	srv := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: time.Minute}) // seeding a large shard takes seconds
	defer rdb.Close()
	ctx := context.Background()
	shards, msgs := 10, 10_000
	auditAddr := ""
	if s := os.Getenv("KEEPER_TEST_AUDIT_MSGS"); s != "" {
		msgs, _ = strconv.Atoi(s)
		auditAddr = srv.Addr
	}
	if s := os.Getenv("KEEPER_TEST_AUDIT_SHARDS"); s != "" {
		shards, _ = strconv.Atoi(s)
	}
	if auditAddr == "" {
		proxies := faultproxy.New()
		t.Cleanup(proxies.Close)
		slow, err := proxies.Add("redis", srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := slow.Latency(1200*time.Millisecond, 0); err != nil {
			t.Fatal(err)
		}
		auditAddr = slow.Addr()
	}
	if err := queue.NewRegistry(rdb, "").Create(ctx, "big", queue.Config{Partitions: shards}); err != nil {
		t.Fatal(err)
	}
	in := queue.NewInspector(rdb, "")
	for p := 0; p < shards; p++ {
		if err := in.SeedLocked(ctx, queue.Shard{Queue: "big", Partition: p}, fmt.Sprintf("m%d-", p), 0, msgs/shards,
			time.Now().Add(time.Hour).UnixMilli(), time.Millisecond, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	out, errOut, err := runOn(t, true, nil, "queue", "audit", "big", "--redis", auditAddr)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("audit (%s): %v\nstdout:\n%s\nstderr:\n%q", took.Round(time.Millisecond), err, out, errOut)
	}
	lines := shown(errOut)
	if !hasLine(lines, fmt.Sprintf(`^audit big  %d/%d shards  .*done in [0-9.]+s  %s messages, 0 problems$`,
		shards, shards, strconv.Itoa(msgs))) {
		t.Fatalf("no final audit line on the terminal:\n%s\nraw: %q", strings.Join(lines, "\n"), errOut)
	}
	if !strings.Contains(out, fmt.Sprintf("present    %d", msgs)) {
		t.Fatalf("stdout:\n%s", out)
	}
	t.Logf("audit of %d messages over %d shards: %s (the status line drawn %d times)",
		msgs, shards, took.Round(time.Millisecond), strings.Count(errOut, "\r\x1b[K"))

	out, errOut, err = runOn(t, false, nil, "queue", "audit", "big", "--redis", srv.Addr, "--json")
	if err != nil || errOut != "" {
		t.Fatalf("audit --json into a pipe: %v, stderr %q", err, errOut)
	}
	var a struct{ Problems []string }
	if err := json.Unmarshal([]byte(out), &a); err != nil || len(a.Problems) != 0 {
		t.Fatalf("audit --json: %v %q", err, out)
	}
}

// keeper bench on a terminal names each phase with how far it is; with
// --json into a pipe it prints the results only.
func TestProgressBench(t *testing.T) {
	srv := redisserver.StartTB(t)
	_, errOut, err := runOn(t, true, nil, "bench", "drain", "--msgs", "40000", "--shards", "8", "--redis", srv.Addr, "--json")
	if err != nil {
		t.Fatalf("bench drain: %v\n%s", err, errOut)
	}
	lines := shown(errOut)
	t.Logf("the terminal shows:\n%s", strings.Join(lines, "\n"))
	for _, re := range []string{
		`^drain: starting  done in`,
		`^bench-drain-raw: seeding  40,000/40,000 locks  .*done in`,
		`^bench-drain-raw: draining  8/8 shards  .*done in`,
		`^bench-drain-keeper: seeding  40,000/40,000 locks  .*done in`,
		`^bench-drain-keeper: draining  8/8 shards  .*done in`,
	} {
		if !hasLine(lines, re) {
			t.Fatalf("no line %s on the terminal:\n%s", re, strings.Join(lines, "\n"))
		}
	}
	out, errOut, err := runOn(t, false, nil, "bench", "ring", "--members", "40", "--json")
	if err != nil || errOut != "" {
		t.Fatalf("bench ring --json into a pipe: %v, stderr %q", err, errOut)
	}
	var res struct{ Scenario string }
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Scenario != "ring" {
		t.Fatalf("bench ring --json: %v %q", err, out)
	}
	_, errOut, err = runOn(t, true, nil, "bench", "ring", "--members", "40", "--json")
	if err != nil || !hasLine(shown(errOut), `^ring: member counts  78/78 rings  .*done in`) {
		t.Fatalf("bench ring on a terminal: %v\n%s", err, strings.Join(shown(errOut), "\n"))
	}
}

// keeper chaos on a terminal shows its phases, the faults phase with how
// far it is and one line per fault above it; with --json into a pipe it
// prints the report only.
func TestProgressChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, redis and keeper processes")
	}
	args := []string{"chaos", "--keepers", "2", "--duration", "2s", "--gap", "300ms", "--faults", "kill",
		"--min-faults", "1", "--queues", "1", "--partitions", "4", "--json"}
	out, errOut, err := runOn(t, true, nil, args...)
	if err != nil {
		t.Fatalf("chaos: %v\n%s", err, errOut)
	}
	lines := shown(errOut)
	t.Logf("the terminal shows:\n%s", strings.Join(lines, "\n"))
	for _, re := range []string{
		`^chaos: starting etcd, redis, keepers and the workload  done in`,
		`^[0-9:]{8} +[0-9.]+s kill `,
		`^chaos: faults  done in .*  faults: [0-9]+, last kill$`,
		`^chaos: settling and draining  done in`,
		`^audit chaos-probe  [0-9]+/[0-9]+ shards  done in .* 0 problems$`,
		`^chaos: checking fences and metrics  done in`,
	} {
		if !hasLine(lines, re) {
			t.Fatalf("no line %s on the terminal:\n%s", re, strings.Join(lines, "\n"))
		}
	}
	var rep struct{ Violations int }
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Violations != 0 {
		t.Fatalf("chaos report: %v %q", err, out)
	}
	out, errOut, err = runOn(t, false, nil, args...)
	if err != nil || errOut != "" {
		t.Fatalf("chaos --json into a pipe: %v, stderr %q", err, errOut)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("chaos --json: %v %q", err, out)
	}
}
