// Package faultproxy runs TCP proxies on loopback, in this process, through
// which the chaos harness sends a keeper's traffic to etcd or Redis, so that
// it can cut, slow down or redirect that traffic one keeper at a time. It is
// a thin wrapper over toxiproxy (github.com/Shopify/toxiproxy/v2) without its
// HTTP API: the harness calls the proxies directly.
package faultproxy

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Server holds the proxies; Close stops them all.
type Server struct {
	api *toxiproxy.ApiServer

	mu      sync.Mutex
	proxies map[*Proxy]bool
}

// New returns a server with no proxies yet.
func New() *Server {
	return &Server{api: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.New(io.Discard)),
		proxies: map[*Proxy]bool{}}
}

// Proxy is one listener on 127.0.0.1 forwarding to an upstream address.
type Proxy struct {
	s    *Server
	name string

	mu     sync.Mutex
	p      *toxiproxy.Proxy
	toxics []string
}

// Add starts a proxy named name (for logs) on a free loopback port,
// forwarding to upstream (host:port).
func (s *Server) Add(name, upstream string) (*Proxy, error) {
	p := toxiproxy.NewProxy(s.api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("proxy %s to %s: %w", name, upstream, err)
	}
	px := &Proxy{s: s, name: name, p: p}
	s.mu.Lock()
	s.proxies[px] = true
	s.mu.Unlock()
	return px, nil
}

// Close stops every proxy and closes their connections.
func (s *Server) Close() {
	s.mu.Lock()
	ps := make([]*Proxy, 0, len(s.proxies))
	for p := range s.proxies {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	for _, p := range ps {
		p.Close()
	}
}

// Name is the name given to Add.
func (p *Proxy) Name() string { return p.name }

// Addr is the proxy's listen address, host:port on 127.0.0.1. It does not
// change for the proxy's life (SetUpstream and Heal keep it).
func (p *Proxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.Listen
}

// Upstream is where the proxy forwards to.
func (p *Proxy) Upstream() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.Upstream
}

// SetUpstream points the proxy at another server, as a DNS or Sentinel
// switch would: connections open to the old one are closed, new ones go to
// addr. The listen address stays.
func (p *Proxy) SetUpstream(addr string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restart(addr)
}

// restart stops the proxy (closing every connection through it) and listens
// again on the same address, forwarding to upstream.
func (p *Proxy) restart(upstream string) error {
	err := p.p.Update(&toxiproxy.Proxy{Listen: p.p.Listen, Upstream: upstream, Enabled: false})
	if err != nil {
		return fmt.Errorf("proxy %s: stop: %w", p.name, err)
	}
	// The port was ours a moment ago; on a busy machine the kernel may
	// still hold it briefly.
	for attempt := 0; ; attempt++ {
		err = p.p.Update(&toxiproxy.Proxy{Listen: p.p.Listen, Upstream: upstream, Enabled: true})
		if err == nil || attempt == 20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("proxy %s: listen again on %s: %w", p.name, p.p.Listen, err)
	}
	return nil
}

func (p *Proxy) addToxic(name, typ, stream string, attrs string) error {
	body := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":%s}`, name, typ, stream, attrs)
	if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
		return fmt.Errorf("proxy %s: add %s toxic: %w", p.name, typ, err)
	}
	p.toxics = append(p.toxics, name)
	return nil
}

// Blackhole drops everything in both directions and keeps connections open,
// new ones included: a network partition. Heal ends it.
func (p *Proxy) Blackhole() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, dir := range []string{"upstream", "downstream"} {
		if err := p.addToxic("blackhole_"+dir, "timeout", dir, `{"timeout":0}`); err != nil {
			return err
		}
	}
	return nil
}

// Latency delays the data in both directions by latency ± jitter.
func (p *Proxy) Latency(latency, jitter time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	attrs := fmt.Sprintf(`{"latency":%d,"jitter":%d}`, latency.Milliseconds(), jitter.Milliseconds())
	for _, dir := range []string{"upstream", "downstream"} {
		if err := p.addToxic("latency_"+dir, "latency", dir, attrs); err != nil {
			return err
		}
	}
	return nil
}

// Timeout stops the data of every connection and closes it after d, as a
// peer that stopped answering and a client that timed out would.
func (p *Proxy) Timeout(d time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addToxic("timeout_downstream", "timeout", "downstream", fmt.Sprintf(`{"timeout":%d}`, max(1, d.Milliseconds())))
}

// Heal removes every toxic and closes the connections that carried them:
// data a blackhole or timeout dropped is gone, so a connection that lived
// through one is no longer a valid stream (real TCP would have timed out).
// New connections pass freely.
func (p *Proxy) Heal() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.toxics) == 0 {
		return nil
	}
	ctx := context.Background()
	for _, name := range p.toxics {
		if err := p.p.Toxics.RemoveToxic(ctx, name); err != nil {
			return fmt.Errorf("proxy %s: remove toxic %s: %w", p.name, name, err)
		}
	}
	p.toxics = nil
	return p.restart(p.p.Upstream)
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.p.Stop()
	p.mu.Unlock()
	p.s.mu.Lock()
	delete(p.s.proxies, p)
	p.s.mu.Unlock()
}
