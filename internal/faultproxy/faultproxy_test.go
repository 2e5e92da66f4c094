package faultproxy

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// echo is a line echo server on loopback, stopped with the test.
func echo(t *testing.T, prefix string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(prefix + line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip dials addr, sends one line and reads the answer within timeout.
func roundTrip(addr string, timeout time.Duration) (string, time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), time.Since(start), err
}

func TestProxyFaults(t *testing.T) {
	s := New()
	t.Cleanup(s.Close)
	a, b := echo(t, "a:"), echo(t, "b:")
	p, err := s.Add("test", a)
	if err != nil {
		t.Fatal(err)
	}
	addr := p.Addr()
	if got, _, err := roundTrip(addr, 2*time.Second); err != nil || got != "a:ping" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	if err := p.Blackhole(); err != nil {
		t.Fatal(err)
	}
	if got, _, err := roundTrip(addr, 300*time.Millisecond); err == nil {
		t.Fatalf("blackholed proxy answered %q", got)
	}
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}
	if got, _, err := roundTrip(addr, 2*time.Second); err != nil || got != "a:ping" {
		t.Fatalf("after heal: %q, %v", got, err)
	}

	if err := p.Latency(200*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	got, took, err := roundTrip(addr, 5*time.Second)
	if err != nil || got != "a:ping" || took < 400*time.Millisecond {
		t.Fatalf("with 200ms latency each way: %q after %s, %v", got, took, err)
	}
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}

	if err := p.Timeout(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got, _, err := roundTrip(addr, 2*time.Second); err == nil {
		t.Fatalf("timed-out proxy answered %q", got)
	}
	if err := p.Heal(); err != nil {
		t.Fatal(err)
	}

	if err := p.SetUpstream(b); err != nil {
		t.Fatal(err)
	}
	if p.Addr() != addr || p.Upstream() != b {
		t.Fatalf("after switch: listen %s (was %s), upstream %s", p.Addr(), addr, p.Upstream())
	}
	if got, _, err := roundTrip(addr, 2*time.Second); err != nil || got != "b:ping" {
		t.Fatalf("after switching upstream: %q, %v", got, err)
	}

	p.Close()
	if _, _, err := roundTrip(addr, 300*time.Millisecond); err == nil {
		t.Fatal("closed proxy still answers")
	}
}
