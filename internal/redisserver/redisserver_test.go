package redisserver

import (
	"syscall"
	"testing"
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
