package redisserver

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/testpki"
)

func TestStartStop(t *testing.T) {
	s := StartTB(t)
	if err := ping(s.Addr); err != nil {
		t.Fatalf("ping: %v", err)
	}
	pid := s.Pid()
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("redis-server pid %d still alive after Stop", pid)
	}
	if err := ping(s.Addr); err == nil {
		t.Fatalf("server still answers after Stop")
	}
}

func TestClockOffset(t *testing.T) {
	s := StartConfigTB(t, Config{ClockOffset: time.Hour})
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	skew := time.Until(time.UnixMicro(redisTime(t, c)))
	if skew < 59*time.Minute || skew > 61*time.Minute {
		t.Fatalf("redis clock is %s off, want about +1h", skew)
	}
}

// redisTime asks the server on c for its TIME, in µs since the epoch.
func redisTime(t *testing.T, c net.Conn) int64 {
	t.Helper()
	if _, err := c.Write([]byte("TIME\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	// *2\r\n$10\r\n<secs>\r\n$<n>\r\n<µs>\r\n
	parts := strings.Split(string(buf[:n]), "\r\n")
	if len(parts) < 5 {
		t.Fatalf("TIME reply %q", buf[:n])
	}
	secs, err1 := strconv.ParseInt(parts[2], 10, 64)
	us, err2 := strconv.ParseInt(parts[4], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("TIME reply %q", buf[:n])
	}
	return secs*1_000_000 + us
}

// With ManualClock, Redis TIME answers exactly the time last set, and stands
// still in between.
func TestManualClock(t *testing.T) {
	s := StartConfigTB(t, Config{ManualClock: true})
	c, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, want := range []int64{2_000_000_000_123_456, 1_000_000_000_000_001, 1_000_000_000_000_001 + 86_400_000_000} {
		if err := s.SetClock(time.UnixMicro(want)); err != nil {
			t.Fatal(err)
		}
		if got, again := redisTime(t, c), redisTime(t, c); got != want || again != want {
			t.Fatalf("TIME after SetClock(%d µs) = %d, then %d", want, got, again)
		}
	}
	if err := StartTB(t).SetClock(time.Now()); err == nil {
		t.Fatal("SetClock on a server without ManualClock did not fail")
	}
}

// With TLS set the server answers PING over TLS on TLSAddr to a client with
// a certificate from the CA, and refuses one without when AuthClients is on.
// --requirepass among ExtraArgs still counts as up (NOAUTH is an answer).
func TestTLSAndPassword(t *testing.T) {
	pki := testpki.NewTB(t)
	s := StartConfigTB(t, Config{TLS: &TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CAFile: pki.CAFile,
		AuthClients: true}, ExtraArgs: []string{"--requirepass", "pw"}})
	caPEM, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	send := func(tc *tls.Config) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.TLSAddr, tc)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("AUTH pw\r\nPING\r\n")); err != nil {
			return "", err
		}
		var got string
		buf := make([]byte, 64)
		for !strings.Contains(got, "PONG") {
			n, err := c.Read(buf)
			if err != nil {
				return got, err
			}
			got += string(buf[:n])
		}
		return got, nil
	}
	if got, err := send(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}); err != nil {
		t.Fatalf("TLS PING with a client certificate: %q %v", got, err)
	}
	if got, err := send(&tls.Config{RootCAs: roots}); err == nil {
		t.Fatalf("TLS PING without a client certificate answered %q", got)
	}
}

// inline sends one inline command and returns the raw reply.
func inline(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// A SIGKILLed server restarts on its port with every write it acknowledged
// when its append-only file is fsynced on every write.
func TestKillRestartFromAOF(t *testing.T) {
	s := StartConfigTB(t, Config{ExtraArgs: []string{"--appendonly", "yes", "--appendfsync", "always"}})
	for i := 0; i < 100; i++ {
		if r := inline(t, s.Addr, "SET k"+strconv.Itoa(i)+" v"+strconv.Itoa(i)); r != "+OK\r\n" {
			t.Fatalf("SET: %q", r)
		}
	}
	pid := s.Pid()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("pid %d alive after Kill", pid)
	}
	if err := s.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s.Pid() == pid {
		t.Fatal("Restart kept the old pid")
	}
	if r := inline(t, s.Addr, "GET k99"); r != "$3\r\nv99\r\n" {
		t.Fatalf("GET k99 after kill -9 and restart: %q", r)
	}
	if r := inline(t, s.Addr, "DBSIZE"); r != ":100\r\n" {
		t.Fatalf("DBSIZE after restart: %q", r)
	}
}
