package etcdserver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/testpki"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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

// With ClientTLS the server speaks https only and requires a client
// certificate from its CA: a client with one gets in; one without, or one
// speaking plain http, is refused.
func TestClientTLS(t *testing.T) {
	pki := testpki.NewTB(t)
	s := StartConfigTB(t, Config{ClientTLS: &transport.TLSInfo{CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		TrustedCAFile: pki.CAFile, ClientCertAuth: true}})
	ep := s.Endpoints()[0]
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s is not https", ep)
	}
	try := func(info *transport.TLSInfo, endpoint string) error {
		// The refused attempts would log their retries at warn level.
		cc := clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()}
		if info != nil {
			tc, err := info.ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			cc.TLS = tc
		}
		cli, err := clientv3.New(cc)
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = cli.Put(ctx, "tls-check", "ok")
		return err
	}
	if err := try(&transport.TLSInfo{TrustedCAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, ep); err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	if err := try(&transport.TLSInfo{TrustedCAFile: pki.CAFile}, ep); err == nil {
		t.Fatal("a client without a certificate was let in")
	}
	if err := try(nil, strings.Replace(ep, "https://", "http://", 1)); err == nil {
		t.Fatal("a plain-http client was let in")
	}
}
