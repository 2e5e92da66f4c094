package etcdserver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newClient(t *testing.T, s *Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// eventually retries f until it succeeds or the deadline passes; a restarted
// server takes a moment before the client's connection is usable again.
func eventually(t *testing.T, d time.Duration, f func(ctx context.Context) error) {
	t.Helper()
	poll.For(t, d, "condition", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := f(ctx); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

func TestStartRestartStop(t *testing.T) {
	s := StartTB(t)
	cli := newClient(t, s)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	before := s.Endpoints()
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if got := s.Endpoints(); got[0] != before[0] {
		t.Fatalf("endpoints changed across restart: %v -> %v", before, got)
	}
	// The same client must reconnect by itself and see the data written
	// before the restart.
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		r, err := cli.Get(ctx, "k")
		if err != nil {
			return err
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v1" {
			t.Fatalf("after restart got %v", r.Kvs)
		}
		return nil
	})
	dir := s.Dir()
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temporary data dir %s not removed: %v", dir, err)
	}
	host := before[0][len("http://"):]
	if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
		c.Close()
		t.Fatalf("server still accepts connections on %s after Stop", host)
	}
	if err := s.Restart(ctx); err == nil {
		t.Fatalf("restart after stop succeeded")
	}
}

func TestPersistentDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	ctx := context.Background()
	s, err := Start(ctx, Config{Dir: dir, Name: "persist"})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	cli := newClient(t, s)
	if _, err := cli.Put(ctx, "k", "kept"); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "member")); err != nil {
		t.Fatalf("given data dir was not kept: %v", err)
	}
	// A new server on the same directory (and new ports) has the data.
	s2, err := Start(ctx, Config{Dir: dir, Name: "persist"})
	if err != nil {
		t.Fatalf("start again: %v", err)
	}
	t.Cleanup(func() { _ = s2.Stop() })
	cli2 := newClient(t, s2)
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		r, err := cli2.Get(ctx, "k")
		if err != nil {
			return err
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "kept" {
			t.Fatalf("after start on same dir got %v", r.Kvs)
		}
		return nil
	})
}

func TestFixedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = Start(context.Background(), Config{ClientPort: port, PeerPort: port + 1, StartTimeout: 5 * time.Second})
	if err == nil {
		t.Fatalf("start on a taken port succeeded")
	}
}
