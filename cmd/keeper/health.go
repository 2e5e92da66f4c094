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

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// errHelp is returned when -h was asked for; not an error for the caller.
var errHelp = flag.ErrHelp

// healthServer serves /healthz (the process runs), /readyz (it is in the
// fleet and Redis answers) and /status (what it owns, as JSON).
type healthServer struct {
	srv  *http.Server
	addr string
}

func startHealth(addr string, d *daemon) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		var problems []string
		if err := d.rdb.Ping(ctx).Err(); err != nil {
			problems = append(problems, "redis: "+err.Error())
		}
		// Ready means our membership key is in etcd right now: we hold a
		// live session and take part in the ring.
		resp, err := d.etcd.Get(ctx, d.cfg.Etcd.Prefix+"members/"+d.coord.MemberID(), clientv3.WithCountOnly())
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
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		owned := d.keeper.Owned()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"member": d.coord.MemberID(), "owned_shards": len(owned), "owned": owned, "leader": d.agg.IsLeader(),
			"redis": d.redisAddr(), "etcd": d.etcd.Endpoints(),
		})
	})
	h := &healthServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: ln.Addr().String()}
	go func() {
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("health endpoint stopped", "err", err)
		}
	}()
	return h, nil
}

func (h *healthServer) stop(ctx context.Context) { _ = h.srv.Shutdown(ctx) }

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
