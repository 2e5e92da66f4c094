package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd with authentication on: the daemon's client logs in with the user
// and the password read from a file (never a flag), and a wrong password is
// a clear error.
func TestEtcdAuthFromPasswordFile(t *testing.T) {
	srv := etcdserver.StartTB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "keeper", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "keeper", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "etcd-password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("run", []string{"--etcd.endpoints", srv.Endpoints()[0], "--etcd.username", "keeper",
		"--etcd.password_file", pw}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: cfg, log: newLogger("error")}
	if err := d.startEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.etcd.Close()
	if _, err := d.etcd.Put(ctx, "/keeper/auth-check", "ok"); err != nil {
		t.Fatalf("authenticated put: %v", err)
	}
	cfg.Etcd.Password = "wrong"
	bad := &daemon{cfg: cfg, log: newLogger("error")}
	err = bad.startEtcd(ctx)
	if err == nil {
		defer bad.etcd.Close()
		_, err = bad.etcd.Put(ctx, "/keeper/auth-check", "no")
	}
	if err == nil {
		t.Fatal("a wrong etcd password was accepted")
	}
	t.Logf("wrong password: %v", err)
}
