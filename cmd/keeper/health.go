package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/keeperhq/keeper/internal/service"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errHelp is returned when -h was asked for; not an error for the caller.
var errHelp = flag.ErrHelp

// healthServer serves /healthz (the process runs), /readyz (it is in the
// fleet and Redis answers) and /status (what it owns, as JSON). It is a
// part of the daemon like the others (internal/service).
type healthServer struct {
	base service.Base
	want string // the configured address
	d    *daemon
	srv  *http.Server
	addr string // the bound address, once started
}

func newHealth(addr string, d *daemon) *healthServer {
	h := &healthServer{want: addr, d: d}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", h.ready)
	mux.HandleFunc("/status", h.status)
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return h
}

// Start binds the address and serves until Stop.
func (h *healthServer) Start(ctx context.Context) error {
	if _, err := h.base.StartInit(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", h.want)
	if err != nil {
		return h.base.StartDone(fmt.Errorf("health endpoint: %w", err))
	}
	h.addr = ln.Addr().String()
	h.base.Go(func(context.Context) {
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.d.log.Error("health endpoint stopped", "err", err)
		}
	})
	return h.base.StartDone(nil)
}

// Stop stops serving, letting requests in flight finish within ctx.
func (h *healthServer) Stop(ctx context.Context) error {
	return h.base.Halt(ctx, h.srv.Shutdown)
}

func (h *healthServer) ready(w http.ResponseWriter, r *http.Request) {
	d := h.d
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var problems []string
	if err := d.rdb.Ping(ctx).Err(); err != nil {
		problems = append(problems, "redis: "+err.Error())
	}
	// Ready means our membership key is in etcd right now: we hold a live
	// session and take part in the ring.
	resp, err := d.etcd.Get(ctx, d.coord.Keys().Member(d.memberID), clientv3.WithCountOnly())
	switch {
	case err != nil:
		problems = append(problems, "etcd: "+err.Error())
	case resp.Count == 0:
		problems = append(problems, "etcd: not registered in the fleet")
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "problems": problems})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": true})
}

func (h *healthServer) status(w http.ResponseWriter, _ *http.Request) {
	d := h.d
	owned := d.keeper.Owned()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"member": d.memberID, "owned_shards": len(owned), "owned": owned, "leader": d.agg.IsLeader(),
		"redis": d.redisAddr(), "etcd": d.etcd.Endpoints(), "layout": d.cfg.Redis.Layout, "redis_commands": d.redisCmds.n.Load(),
	})
}

// quietEtcdLogger keeps the etcd client's own retries out of keeper's logs;
// keeper logs what matters (session lost, ownership changes) itself.
func quietEtcdLogger() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}
