package queue

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"
)

// model is the reference that FuzzScripts holds the native scripts to: one
// shard of one queue, written as plainly as possible. It is the
// specification of the scripts; where it and Redis disagree, one of them is
// wrong.
//
// A message is in exactly one state (ready, inflight, locked or dead) with
// one score there; everything else about it travels with it and is forgotten
// when it leaves the shard (acked, expired or trimmed). Times are Redis's
// clock: now is µs, scores and deadlines are ms.
type model struct {
	cfg    Config // the queue's config, with defaults
	record bool   // housekeeping passes are recorded in the history
	now    int64  // Redis TIME, µs

	msgs     map[string]*modelMsg
	seq      int64 // the last delivery token minted
	fence    int64 // the highest ownership token accepted; 0 when unset
	fenceSet bool
	owner    string // who presented the fence's token
	ownerSet bool
	clean    bool  // measured, and nothing changed since
	trimWake bool  // a trim wake is outstanding
	deleted  bool  // the queue was deleted: a tombstone refuses every script
	gen      int64 // the generation of the last config written (create, update)
	stats    map[string]int64
	history  []modelPass

	// cached: the Go client holds the queue's config, so it reaches the
	// scripts (and their tombstone check) without reading the registry.
	cached bool
}

// keeperPass is who presents a housekeeping write: an ownership token and
// the owner's identity.
type keeperPass struct {
	token int64
	owner string
}

type msgState int

const (
	stReady msgState = iota
	stInflight
	stLocked
	stDead
)

var stateKey = [...]string{"ready", "inflight", "locked", "dead"}

type modelMsg struct {
	state msgState
	// score in its state's set: the priority (ready), the lease deadline
	// (inflight), the unlock time (locked), the time dead-lettered (dead).
	score float64
	body  string
	enq   int64  // enqueue time, ms
	exp   int64  // expiry time, ms; 0: never
	prio  string // the score it goes back to ready with
	dlv   int64  // deliveries so far
	tok   int64  // the delivery token of the current lease, in flight only
}

// modelPass is one entry of the history stream.
type modelPass struct {
	ms, seq int64 // its stream id
	task    string
	by      keeperPass
	ok      bool
	moved   int
}

var inf = math.Inf(1)

func newModel(cfg Config, record bool, nowUs int64) *model {
	return &model{cfg: cfg.WithDefaults(), record: record, now: nowUs,
		msgs: map[string]*modelMsg{}, stats: map[string]int64{}}
}

func (m *model) nowMs() int64 { return m.now / 1000 }

func (m *model) count(s msgState) int {
	n := 0
	for _, x := range m.msgs {
		if x.state == s {
			n++
		}
	}
	return n
}

// size is what max_size caps: ready + inflight + locked.
func (m *model) size() int { return len(m.msgs) - m.count(stDead) }

// expired: the message's TTL has passed.
func (m *model) expired(x *modelMsg) bool { return x.exp > 0 && x.exp <= m.nowMs() }

// first returns the ids of state s with a score of at most maxScore, lowest
// score first and ties by id (bytewise), at most n of them: the order of a
// Redis sorted set.
func (m *model) first(s msgState, maxScore float64, n int) []string {
	return m.lowest(n, func(x *modelMsg) (float64, bool) { return x.score, x.state == s && x.score <= maxScore })
}

// head is the lowest score of state s, or -1 for none.
func (m *model) head(s msgState) int64 {
	ids := m.first(s, inf, 1)
	if len(ids) == 0 {
		return -1
	}
	return int64(m.msgs[ids[0]].score)
}

// The TTL index holds every message with an expiry that is not in flight
// (an in-flight one is checked when its lease ends instead), by expiry.
func inTTLIndex(x *modelMsg) bool { return x.exp > 0 && x.state != stInflight }

// ttlHead is the earliest expiry in the TTL index, or -1.
func (m *model) ttlHead() int64 {
	ids := m.lowest(1, func(x *modelMsg) (float64, bool) { return float64(x.exp), inTTLIndex(x) })
	if len(ids) == 0 {
		return -1
	}
	return m.msgs[ids[0]].exp
}

// dueTTL is the TTL index's due ids, earliest expiry first, at most n.
func (m *model) dueTTL(n int) []string {
	return m.lowest(n, func(x *modelMsg) (float64, bool) { return float64(x.exp), inTTLIndex(x) && m.expired(x) })
}

// lowest returns at most n ids of the messages that score selects, by
// their score and then id (bytewise), as Redis orders a sorted set.
func (m *model) lowest(n int, score func(*modelMsg) (float64, bool)) []string {
	type entry struct {
		id    string
		score float64
	}
	var es []entry
	for id, x := range m.msgs {
		if sc, ok := score(x); ok {
			es = append(es, entry{id, sc})
		}
	}
	sort.Slice(es, func(i, j int) bool {
		if es[i].score != es[j].score {
			return es[i].score < es[j].score
		}
		return es[i].id < es[j].id
	})
	ids := make([]string, 0, min(n, len(es)))
	for _, e := range es[:min(n, len(es))] {
		ids = append(ids, e.id)
	}
	return ids
}

func (m *model) move(x *modelMsg, s msgState, score float64) {
	x.state, x.score, x.tok = s, score, 0
}

// toReady puts x back to ready at its priority.
func (m *model) toReady(x *modelMsg) {
	p, _ := strconv.ParseFloat(x.prio, 64)
	m.move(x, stReady, p)
}

// lagFieldOf is the stats field of the lag histogram's bucket for lagUs.
func lagFieldOf(lagUs int64) string {
	for i, b := range LagBoundsUs {
		if lagUs <= b {
			return lagField(i)
		}
	}
	return lagInfField
}

// tally adds n to a counter; a counter appears with its first increment.
func (m *model) tally(counter string, n int) {
	if n > 0 {
		m.stats[counter] += int64(n)
	}
}

// admit lets a housekeeping pass of task by k write, or refuses it and
// changes nothing but the history: on a deleted queue; with a token below
// the fence; with the fence's own token from another owner (after an etcd
// restore two keepers can hold equal tokens; a fence set before owners
// were recorded accepts its token from anyone). Admitted, the fence rises
// to k's token (accepted tokens never decrease) and names k's owner.
func (m *model) admit(task string, k keeperPass) error {
	if m.deleted {
		return ErrUnknownQueue
	}
	if k.token < m.fence || (k.token == m.fence && m.fenceSet && m.ownerSet && k.owner != m.owner) {
		m.log(task, k, false, 0)
		fe := &FencedError{Shard: fuzzShard, Token: k.token, Fence: m.fence}
		if m.ownerSet {
			fe.Owner = m.owner
		}
		return fe
	}
	if k.token > m.fence {
		m.fence, m.fenceSet = k.token, true
	}
	m.owner, m.ownerSet = k.owner, true
	return nil
}

func (m *model) log(task string, k keeperPass, ok bool, moved int) {
	if !m.record {
		return
	}
	p := modelPass{ms: m.nowMs(), task: task, by: k, ok: ok, moved: moved}
	if n := len(m.history); n > 0 && m.history[n-1].ms >= p.ms {
		p.ms, p.seq = m.history[n-1].ms, m.history[n-1].seq+1
	}
	m.history = append(m.history, p)
}

// configWritten: a create or update of the queue's config gave it a new
// generation, set in the shard first. A client holding an older config is
// refused by enqueue and pull and reloads it: a retry the model need not
// show.
func (m *model) configWritten() { m.gen++ }

// clientConfig is the Go client reading the queue's config: from its cache,
// else from the registry, which has none for a deleted queue.
func (m *model) clientConfig() error {
	if m.cached {
		return nil
	}
	if m.deleted {
		return ErrUnknownQueue
	}
	m.cached = true
	return nil
}

// clientScript is a client's script call meeting the tombstone of a
// deleted queue: refused, and the client forgets the config.
func (m *model) clientScript() error {
	if m.deleted {
		m.cached = false
		return ErrUnknownQueue
	}
	return nil
}

// deleteQueue is Registry.Delete: the messages and everything about them
// go; the fence, its owner, the config generation and the token sequence
// stay with a tombstone, so
// that neither an old keeper's token nor an old consumer's delivery token
// is accepted by a queue created again under the same name.
func (m *model) deleteQueue() error {
	if m.deleted {
		return ErrUnknownQueue
	}
	m.msgs, m.stats, m.history = map[string]*modelMsg{}, map[string]int64{}, nil
	m.clean, m.trimWake, m.deleted = false, false, true
	return nil
}

// createQueue is Registry.Create of the deleted queue again.
func (m *model) createQueue() error {
	if !m.deleted {
		return ErrQueueExists
	}
	m.deleted = false
	m.configWritten()
	return nil
}

// --- producers and consumers ------------------------------------------------

func (m *model) enqueue(msg Message) (EnqueueResult, error) {
	// Deadlines are whole ms (rounded down): a TTL under 1ms would read as
	// "none", so it is refused.
	if msg.TTL != 0 && (msg.TTL < time.Millisecond || msg.TTL > maxTTL) {
		return EnqueueResult{}, ErrBadMessage
	}
	if err := m.clientConfig(); err != nil {
		return EnqueueResult{}, err
	}
	if len(msg.Payload) > m.cfg.MaxPayloadBytes {
		return EnqueueResult{}, ErrTooBig
	}
	if err := m.clientScript(); err != nil {
		return EnqueueResult{}, err
	}
	res := EnqueueResult{ID: msg.ID, Shard: fuzzShard}
	if x, ok := m.msgs[msg.ID]; ok {
		m.stats["deduplicated"]++
		res.Duplicate, res.EnqueuedAt = true, time.UnixMilli(x.enq)
		return res, nil
	}
	now := m.nowMs()
	x := &modelMsg{body: string(msg.Payload), enq: now, prio: strconv.FormatInt(now, 10)}
	if msg.Priority != nil {
		x.prio = strconv.FormatInt(*msg.Priority, 10)
	}
	ttl := m.cfg.TTL.D()
	if msg.TTL > 0 {
		ttl = msg.TTL
	}
	if ttl.Milliseconds() > 0 {
		x.exp = now + ttl.Milliseconds()
	}
	if d := msg.Delay.Milliseconds(); d > 0 {
		m.move(x, stLocked, float64(now+d))
	} else {
		m.toReady(x)
	}
	m.msgs[msg.ID] = x
	m.stats["enqueued"]++
	if m.cfg.MaxSize > 0 && m.size() > m.cfg.MaxSize {
		m.trimWake = true
	}
	m.clean = false
	res.EnqueuedAt = time.UnixMilli(now)
	return res, nil
}

func (m *model) pull(n int, lease time.Duration) ([]Delivery, error) {
	if n <= 0 || n > MaxPull {
		return nil, ErrBadMessage
	}
	if err := m.clientConfig(); err != nil {
		return nil, err
	}
	if lease == 0 {
		lease = m.cfg.Lease.D()
	}
	if lease < time.Millisecond || lease > MaxLease {
		return nil, ErrBadMessage
	}
	if err := m.clientScript(); err != nil {
		return nil, err
	}
	capped := false
	if share := m.cfg.InFlightShare(0); share < 0 {
		n, capped = 0, true
	} else if room := share - m.count(stInflight); share > 0 && room < n {
		n, capped = room, true
	}
	var out []Delivery
	if n > 0 {
		ids := m.first(stReady, inf, n)
		deadline := m.nowMs() + lease.Milliseconds()
		for _, id := range ids {
			x := m.msgs[id]
			if m.expired(x) {
				delete(m.msgs, id)
				m.stats["expired"]++
				continue
			}
			m.seq++
			x.dlv++
			m.move(x, stInflight, float64(deadline))
			x.tok = m.seq
			out = append(out, Delivery{Shard: fuzzShard, ID: id, Token: strconv.FormatInt(x.tok, 10),
				Deliveries: int(x.dlv), Payload: []byte(x.body), LeaseDeadline: time.UnixMilli(deadline)})
		}
		m.tally("pulled", len(out))
		if len(ids) > 0 {
			m.clean = false
		}
	}
	if len(out) == 0 && capped {
		return nil, ErrCapped
	}
	return out, nil
}

// leased is the in-flight message d names, if d's token is still its lease.
func (m *model) leased(d Delivery) (*modelMsg, error) {
	if err := m.clientScript(); err != nil {
		return nil, err
	}
	x, ok := m.msgs[d.ID]
	if !ok || x.state != stInflight || strconv.FormatInt(x.tok, 10) != d.Token {
		return nil, ErrStale
	}
	return x, nil
}

func (m *model) ack(d Delivery) error {
	if _, err := m.leased(d); err != nil {
		return err
	}
	delete(m.msgs, d.ID)
	m.stats["acked"]++
	m.clean = false
	return nil
}

func (m *model) nack(d Delivery, opt NackOptions) (State, error) {
	if err := m.clientConfig(); err != nil {
		return "", err
	}
	x, err := m.leased(d)
	if err != nil {
		return "", err
	}
	now := m.nowMs()
	m.stats["nacked"]++
	m.clean = false
	if opt.Priority != nil {
		x.prio = strconv.FormatInt(*opt.Priority, 10)
	}
	switch lock := opt.LockFor.Milliseconds(); {
	case m.expired(x):
		delete(m.msgs, d.ID)
		m.stats["expired"]++
		return StateExpired, nil
	case m.cfg.MaxDeliveries > 0 && x.dlv >= int64(m.cfg.MaxDeliveries):
		m.move(x, stDead, float64(now))
		m.stats["dead_lettered"]++
		return StateDead, nil
	case lock > 0:
		m.move(x, stLocked, float64(now+lock))
		return StateLocked, nil
	default:
		m.toReady(x)
		return StateReady, nil
	}
}

func (m *model) extend(d Delivery, lease time.Duration) (time.Time, error) {
	if lease < time.Millisecond || lease > MaxLease {
		return time.Time{}, ErrBadMessage
	}
	x, err := m.leased(d)
	if err != nil {
		return time.Time{}, err
	}
	due := m.nowMs() + lease.Milliseconds()
	x.score = float64(due)
	return time.UnixMilli(due), nil
}

// seedLocked is Inspector.SeedLocked, for fresh ids only (it overwrites).
func (m *model) seedLocked(prefix string, first, count int, firstDueMs int64, step time.Duration, payload string) error {
	if m.deleted {
		return ErrUnknownQueue
	}
	for idx := first; idx < first+count; idx++ {
		x := &modelMsg{body: payload, enq: firstDueMs, prio: strconv.FormatInt(firstDueMs, 10)}
		m.move(x, stLocked, float64(firstDueMs+int64(idx)*step.Microseconds()/1000))
		m.msgs[prefix+strconv.Itoa(idx)] = x
	}
	m.stats["enqueued"] += int64(count)
	return nil
}

// --- housekeeping -------------------------------------------------------------

func (m *model) unlock(k keeperPass, batch int) (PassResult, error) {
	if err := m.admit("unlock", k); err != nil {
		return PassResult{}, err
	}
	ids := m.first(stLocked, float64(m.nowMs()), batch)
	r := PassResult{Moved: len(ids), Full: len(ids) >= batch, NowUs: m.now, Lags: []time.Duration{}}
	var lagSum int64
	for _, id := range ids {
		x := m.msgs[id]
		lag := m.now - int64(x.score)*1000
		r.Lags = append(r.Lags, time.Duration(lag)*time.Microsecond)
		m.stats[lagFieldOf(max(lag, 0))]++
		lagSum += min(max(lag, 0), LagSumCapUs)
		m.toReady(x)
	}
	m.tally("unlocked", len(ids))
	if len(ids) > 0 {
		m.stats[lagSumField] += lagSum // written with the first unlock, even when 0
	}
	m.moved(len(ids))
	m.log("unlock", k, true, len(ids))
	r.NextMs = m.head(stLocked)
	return r, nil
}

// requeue recovers expired leases: to dead when the message was delivered
// max_deliveries times, dropped when its TTL passed, else back to ready.
func (m *model) requeue(k keeperPass, batch int) (PassResult, error) {
	if err := m.admit("requeue", k); err != nil {
		return PassResult{}, err
	}
	ids := m.first(stInflight, float64(m.nowMs()), batch)
	r := PassResult{Moved: len(ids), Full: len(ids) >= batch, NowUs: m.now}
	for _, id := range ids {
		x := m.msgs[id]
		switch {
		case m.expired(x):
			delete(m.msgs, id)
			r.Expired++
		case m.cfg.MaxDeliveries > 0 && x.dlv >= int64(m.cfg.MaxDeliveries):
			m.move(x, stDead, float64(m.nowMs()))
			r.DeadLettered++
		default:
			m.toReady(x)
			r.Requeued++
		}
	}
	m.tally("requeued", r.Requeued)
	m.tally("dead_lettered", r.DeadLettered)
	m.tally("expired", r.Expired)
	m.moved(len(ids))
	m.log("requeue", k, true, len(ids))
	r.NextMs = m.head(stInflight)
	if h := m.ttlHead(); h >= 0 {
		r.Hints = []Due{{Task: TaskExpire, AtMs: h}}
	}
	return r, nil
}

func (m *model) expire(k keeperPass, batch int) (PassResult, error) {
	if err := m.admit("expire", k); err != nil {
		return PassResult{}, err
	}
	ids := m.dueTTL(batch)
	for _, id := range ids {
		delete(m.msgs, id)
	}
	m.tally("expired", len(ids))
	m.moved(len(ids))
	m.log("expire", k, true, len(ids))
	return PassResult{Moved: len(ids), Full: len(ids) >= batch, NextMs: m.ttlHead(), NowUs: m.now,
		Expired: len(ids)}, nil
}

// trim drops the lowest-score ready messages while the shard is over
// max_size; in-flight and locked ones count but stay.
func (m *model) trim(k keeperPass, batch int) (PassResult, error) {
	if err := m.admit("trim", k); err != nil {
		return PassResult{}, err
	}
	m.trimWake = false
	r := PassResult{NextMs: -1, NowUs: m.now}
	if m.cfg.MaxSize <= 0 {
		m.log("trim", k, true, 0)
		return r, nil
	}
	ready := m.count(stReady)
	excess := m.size() - m.cfg.MaxSize
	n := min(excess, ready, batch)
	if n <= 0 {
		m.log("trim", k, true, 0)
		r.Excess = int64(max(excess, 0))
		return r, nil
	}
	for _, id := range m.first(stReady, inf, n) {
		delete(m.msgs, id)
	}
	m.tally("trimmed", n)
	m.moved(n)
	m.log("trim", k, true, n)
	r.Moved, r.Excess = n, int64(excess-n)
	r.Full = r.Excess > 0 && ready-n > 0
	return r, nil
}

// moved: a pass that moved messages makes the shard due for measuring.
func (m *model) moved(n int) {
	if n > 0 {
		m.clean = false
	}
}

func (m *model) measure(k keeperPass) (Measurement, error) {
	if err := m.admit("measure", k); err != nil {
		return Measurement{}, err
	}
	r := Measurement{NowUs: m.now, Ready: int64(m.count(stReady)), Inflight: int64(m.count(stInflight)),
		Locked: int64(m.count(stLocked)), Dead: int64(m.count(stDead)), Counters: m.counters(), Lag: m.lag()}
	if ids := m.first(stReady, inf, 1); len(ids) > 0 {
		r.HasReady, r.ReadyHead = true, m.msgs[ids[0]].score
	}
	m.clean = true
	m.log("measure", k, true, 0)
	return r, nil
}

// probe reads the heads; with claim it first sets the fence to k's token
// and owner (equal ones written again).
func (m *model) probe(claim bool, k keeperPass) ProbeResult {
	if m.deleted {
		return ProbeResult{Err: ErrUnknownQueue}
	}
	if claim {
		if err := m.admit("claim", k); err != nil {
			return ProbeResult{Err: err}
		}
		m.fence, m.fenceSet = k.token, true
		m.log("claim", k, true, 0)
	}
	r := ProbeResult{LockedHead: m.head(stLocked), InflightHead: m.head(stInflight), TTLHead: m.ttlHead()}
	if m.cfg.MaxSize > 0 {
		r.Excess = int64(m.size() - m.cfg.MaxSize)
	}
	return r
}

// --- reading ---------------------------------------------------------------------

func (m *model) inspect(id string) (MessageInfo, error) {
	if err := m.clientConfig(); err != nil {
		return MessageInfo{}, err
	}
	if err := m.clientScript(); err != nil {
		return MessageInfo{}, err
	}
	x, ok := m.msgs[id]
	if !ok {
		return MessageInfo{}, ErrNotFound
	}
	info := MessageInfo{ID: id, Shard: fuzzShard.String(), State: State(stateKey[x.state]), Score: x.score,
		Deliveries: int(x.dlv), EnqueuedAt: time.UnixMilli(x.enq), PayloadBytes: len(x.body)}
	info.Priority, _ = strconv.ParseInt(x.prio, 10, 64)
	if x.exp > 0 {
		info.ExpiresAt = time.UnixMilli(x.exp)
	}
	return info, nil
}

// audit is what Client.Audit finds in a consistent shard: no problems.
func (m *model) audit() (Audit, error) {
	if m.deleted {
		return Audit{}, ErrUnknownQueue
	}
	a := Audit{Queue: fuzzShard.Queue, Counters: m.counters(), Members: map[string]State{}}
	for id, x := range m.msgs {
		a.Members[id] = State(stateKey[x.state])
	}
	a.Ready, a.Inflight = int64(m.count(stReady)), int64(m.count(stInflight))
	a.Locked, a.Dead = int64(m.count(stLocked)), int64(m.count(stDead))
	return a, nil
}

func (m *model) queueStats() (QueueStats, error) {
	if m.deleted {
		return QueueStats{}, ErrUnknownQueue
	}
	ss := ShardStats{Shard: fuzzShard.String(), Ready: int64(m.count(stReady)), Inflight: int64(m.count(stInflight)),
		Locked: int64(m.count(stLocked)), Dead: int64(m.count(stDead)), Fence: m.fence, Counters: m.counters()}
	return QueueStats{Queue: fuzzShard.Queue, Config: m.cfg, Ready: ss.Ready, Inflight: ss.Inflight,
		Locked: ss.Locked, Dead: ss.Dead, Counters: m.counters(), Shards: []ShardStats{ss}}, nil
}

func (m *model) counters() Counters {
	var c Counters
	for k, v := range m.stats {
		c.readCounter(k, strconv.FormatInt(v, 10))
	}
	return c
}

func (m *model) lag() LagHistogram {
	var h LagHistogram
	for k, v := range m.stats {
		h.readLag(k, strconv.FormatInt(v, 10))
	}
	return h
}

// --- the shard as Redis keys ----------------------------------------------------

// keyState is one Redis key in a comparable form.
type keyState struct {
	typ string
	z   map[string]float64 // zset
	h   map[string]string  // hash
	s   string             // string
	x   []string           // stream: "<id> task=... token=... ok=... moved=..."
}

// keys renders the model as the shard's Redis keys (by their suffix: ready,
// body, fence...), empty ones left out as Redis does.
func (m *model) keys() map[string]keyState {
	n := len(m.msgs)
	out := map[string]keyState{}
	z := map[string]map[string]float64{}
	for _, name := range []string{"ready", "inflight", "locked", "dead", "ttl"} {
		z[name] = make(map[string]float64, n)
	}
	h := map[string]map[string]string{}
	for _, name := range []string{"body", "meta", "prio", "dlv", "tok", "stats"} {
		h[name] = make(map[string]string, n)
	}
	for id, x := range m.msgs {
		z[stateKey[x.state]][id] = x.score
		if inTTLIndex(x) {
			z["ttl"][id] = float64(x.exp)
		}
		h["body"][id] = x.body
		h["meta"][id] = strconv.FormatInt(x.enq, 10) + "|" + strconv.FormatInt(x.exp, 10)
		h["prio"][id] = x.prio
		if x.dlv > 0 {
			h["dlv"][id] = strconv.FormatInt(x.dlv, 10)
		}
		if x.state == stInflight {
			h["tok"][id] = strconv.FormatInt(x.tok, 10)
		}
	}
	for k, v := range m.stats {
		h["stats"][k] = strconv.FormatInt(v, 10)
	}
	for name, v := range z {
		if len(v) > 0 {
			out[name] = keyState{typ: "zset", z: v}
		}
	}
	for name, v := range h {
		if len(v) > 0 {
			out[name] = keyState{typ: "hash", h: v}
		}
	}
	str := func(name, v string) { out[name] = keyState{typ: "string", s: v} }
	if m.seq > 0 {
		str("seq", strconv.FormatInt(m.seq, 10))
	}
	if m.fenceSet {
		str("fence", strconv.FormatInt(m.fence, 10))
	}
	if m.ownerSet {
		str("owner", m.owner)
	}
	if m.deleted {
		str("deleted", "1")
	}
	if m.gen > 0 {
		str("gen", strconv.FormatInt(m.gen, 10))
	}
	if m.clean {
		str("clean", "1")
	}
	if m.trimWake {
		str("trimwake", "1")
	}
	if len(m.history) > 0 {
		k := keyState{typ: "stream"}
		for _, p := range m.history {
			ok := 0
			if p.ok {
				ok = 1
			}
			k.x = append(k.x, fmt.Sprintf("%d-%d task=%s token=%d owner=%s ok=%d moved=%d", p.ms, p.seq, p.task,
				p.by.token, p.by.owner, ok, p.moved))
		}
		out["history"] = k
	}
	return out
}
