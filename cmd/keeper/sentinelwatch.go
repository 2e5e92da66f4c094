package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keeperhq/keeper/internal/service"
)

// sentinelWatch closes every connection `keeper run` still has open to a
// Redis primary that Sentinel replaced.
//
// go-redis's failover client stops handing out pooled connections to the
// old primary when its sentinel announces the switch, but it leaves its
// pub/sub connections where they are. After a failover that found the old
// primary alive (SENTINEL FAILOVER, a partition), that server stays a
// primary that nobody writes to until Sentinel turns it into a replica,
// about ten seconds later: keeper's wake subscription would listen to it
// all that time and miss every hint of an earlier deadline published on the
// new primary, so a lock nacked for 100 ms would wait for the sweep.
// Closing those connections makes go-redis subscribe again, on the new
// primary, and keeper probes each shard again when its subscription is
// re-established. Passes still running on the old primary fail at once and
// are retried on the new one.
//
// The watch dials every connection of the client (Dialer), keeps the open
// ones by address, and follows +switch-master on one sentinel at a time
// with its own subscription.
type sentinelWatch struct {
	master  string
	addrs   []string
	options func(addr string) *redis.Options // a sentinel client's
	dialer  net.Dialer
	tls     *tls.Config
	log     *slog.Logger

	mu      sync.Mutex
	conns   map[*watchedConn]string // open connection -> the address dialled
	primary string                  // the primary the sentinels name
	former  map[string]bool         // addresses that were the primary before

	svc service.Base
}

// newSentinelWatch prepares a watch for the client options opt (a failover
// client's, MasterName set) and sets opt.Dialer to its own. Start follows
// the sentinels.
func newSentinelWatch(opt *redis.UniversalOptions, log *slog.Logger) *sentinelWatch {
	w := &sentinelWatch{master: opt.MasterName, addrs: opt.Addrs, tls: opt.TLSConfig, log: log,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		conns:  map[*watchedConn]string{}, former: map[string]bool{}}
	w.options = func(addr string) *redis.Options {
		return &redis.Options{Addr: addr, Username: opt.SentinelUsername, Password: opt.SentinelPassword,
			TLSConfig: opt.TLSConfig, MaxRetries: -1}
	}
	opt.Dialer = w.dial
	return w
}

// dial is go-redis's dialer (TCP, then TLS when configured, as go-redis
// dials without one), keeping the connection until it is closed.
func (w *sentinelWatch) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	if w.tls != nil {
		d := tls.Dialer{NetDialer: &w.dialer, Config: w.tls}
		c, err = d.DialContext(ctx, network, addr)
	} else {
		c, err = w.dialer.DialContext(ctx, network, addr)
	}
	if err != nil {
		return nil, err
	}
	wc := &watchedConn{Conn: c, w: w}
	w.mu.Lock()
	w.conns[wc] = addr
	w.mu.Unlock()
	return wc, nil
}

// Start follows the sentinels until Stop.
func (w *sentinelWatch) Start(ctx context.Context) error {
	if _, err := w.svc.StartInit(ctx); err != nil {
		return err
	}
	w.svc.Go(func(ctx context.Context) {
		backoff := 100 * time.Millisecond
		for i := 0; ctx.Err() == nil; i++ {
			if w.follow(ctx, w.addrs[i%len(w.addrs)]) {
				backoff = 100 * time.Millisecond
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	})
	return w.svc.StartDone(nil)
}

// Stop ends the following. Connections stay open: they belong to the client.
func (w *sentinelWatch) Stop(ctx context.Context) error { return w.svc.Halt(ctx, nil) }

// follow subscribes to +switch-master on the sentinel at addr and applies
// each switch until the subscription fails. It reports whether it got as
// far as subscribing.
func (w *sentinelWatch) follow(ctx context.Context, addr string) bool {
	sc := redis.NewSentinelClient(w.options(addr))
	defer sc.Close()
	ps := sc.Subscribe(ctx, "+switch-master")
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	if _, err := ps.Receive(ctx); err != nil {
		return false
	}
	// A switch announced while no subscription was up is only in the
	// sentinel's answer. A sentinel that lags behind the others may name
	// the old primary: then the connections to the new one are closed
	// once, redialled where go-redis's own sentinel says, and the lagging
	// sentinel's +switch-master, when it catches up, sets this right.
	hostPort, err := sc.GetMasterAddrByName(ctx, w.master).Result()
	if err != nil || len(hostPort) != 2 {
		return true
	}
	w.switchTo(net.JoinHostPort(hostPort[0], hostPort[1]))
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			return true
		}
		m, ok := msg.(*redis.Message)
		if !ok {
			continue
		}
		// <master name> <old ip> <old port> <new ip> <new port>
		f := strings.Fields(m.Payload)
		if len(f) != 5 || f[0] != w.master {
			continue
		}
		w.mu.Lock()
		w.former[net.JoinHostPort(f[1], f[2])] = true
		w.mu.Unlock()
		w.switchTo(net.JoinHostPort(f[3], f[4]))
	}
}

// switchTo records primary as the master's address and closes every
// connection to an address that was the primary before.
func (w *sentinelWatch) switchTo(primary string) {
	w.mu.Lock()
	prev := w.primary
	if prev != "" {
		w.former[prev] = true
	}
	w.primary = primary
	delete(w.former, primary)
	var stale []*watchedConn
	for c, addr := range w.conns {
		if w.former[addr] {
			stale = append(stale, c)
		}
	}
	w.mu.Unlock()
	for _, c := range stale {
		_ = c.Close()
	}
	if prev != "" && prev != primary {
		w.log.Warn("redis primary switched by sentinel; closed the connections to the old one",
			"master", w.master, "from", prev, "to", primary, "closed", len(stale))
	}
}

// watchedConn leaves the watch's list when closed.
type watchedConn struct {
	net.Conn
	w    *sentinelWatch
	once sync.Once
}

func (c *watchedConn) Close() error {
	c.once.Do(func() {
		c.w.mu.Lock()
		delete(c.w.conns, c)
		c.w.mu.Unlock()
	})
	return c.Conn.Close()
}
