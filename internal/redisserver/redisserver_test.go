package redisserver

import (
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
	if _, err := c.Write([]byte("TIME\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	// *2\r\n$10\r\n<secs>\r\n...
	parts := strings.Split(string(buf[:n]), "\r\n")
	secs, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		t.Fatalf("TIME reply %q: %v", buf[:n], err)
	}
	skew := time.Until(time.Unix(secs, 0))
	if skew < 59*time.Minute || skew > 61*time.Minute {
		t.Fatalf("redis clock is %s off, want about +1h", skew)
	}
}
