package chaos

import (
	"context"
	"sync"
	"time"
)

// OwnSample is who owned how many shards at one moment, as the keepers
// that answered said.
type OwnSample struct {
	At      float64        `json:"at_s"`
	Owned   map[string]int `json:"owned"`
	Unowned int            `json:"unowned"` // shards no answering keeper owns
	Multi   int            `json:"multi"`   // shards more than one keeper says it owns
}

// Timeline is what the run's picture shows.
type Timeline struct {
	Samples []OwnSample
	Lags    []LagSample
	Shards  int
}

// sampler asks every keeper what it owns a few times a second, for the
// picture and to know which keeper held which token.
type sampler struct {
	c     *Cluster
	start time.Time

	mu      sync.Mutex
	samples []OwnSample
	tokens  map[int64]string

	cancel context.CancelFunc
	done   chan struct{}
}

const sampleEvery = 250 * time.Millisecond

func startSampler(ctx context.Context, c *Cluster, start time.Time, shards int) *sampler {
	s := &sampler{c: c, start: start, tokens: map[int64]string{}, done: make(chan struct{})}
	ctx, s.cancel = context.WithCancel(ctx)
	go func() {
		defer close(s.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			s.sample(ctx, shards)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample(ctx context.Context, shards int) {
	ks := s.c.Keepers()
	type answer struct {
		id string
		st Status
		ok bool
	}
	answers := make([]answer, len(ks))
	var wg sync.WaitGroup
	for i, k := range ks {
		if k.Exited() || k.Paused() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			st, err := k.Status(sctx)
			answers[i] = answer{id: k.ID, st: st, ok: err == nil}
		}()
	}
	wg.Wait()
	smp := OwnSample{At: time.Since(s.start).Seconds(), Owned: map[string]int{}}
	owners := map[string]int{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range answers {
		if !a.ok {
			continue
		}
		smp.Owned[a.id] = len(a.st.Owned)
		for sh, tok := range a.st.Owned {
			owners[sh]++
			s.tokens[tok] = a.id
		}
	}
	for _, n := range owners {
		if n > 1 {
			smp.Multi++
		}
	}
	smp.Unowned = max(0, shards-len(owners))
	if ctx.Err() == nil {
		s.samples = append(s.samples, smp)
	}
}

// note records k's tokens now (before a fault takes it away).
func (s *sampler) note(ctx context.Context, k *Keeper) {
	st, err := k.Status(ctx)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tok := range st.Owned {
		s.tokens[tok] = k.ID
	}
}

// tokenOwners maps every token seen to the keeper that held it.
func (s *sampler) tokenOwners() map[int64]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int64]string, len(s.tokens))
	for t, k := range s.tokens {
		out[t] = k
	}
	return out
}

func (s *sampler) all() []OwnSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]OwnSample(nil), s.samples...)
}

func (s *sampler) stop() {
	s.cancel()
	<-s.done
}
