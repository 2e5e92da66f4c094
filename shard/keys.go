package shard

import (
	"strconv"
	"strings"
)

// PrefixDefault is the etcd key prefix when none is configured.
const PrefixDefault = "/keeper/"

// Keys is the etcd key layout of one deployment: every key keeper writes or
// reads, all under one prefix. It is the only place key names are built;
// package election, `keeper status` and the daemon's /readyz use it too.
//
//	<prefix>members/<id>          a live keeper, bound to its session lease; value: the id
//	<prefix>owners/<unit>         the owner of a ring unit, bound to the owner's session
//	                              lease; value: the member id; its CreateRevision is the
//	                              fencing token of every shard in the unit
//	<prefix>ring                  the ring configuration all keepers share (RingConfig as
//	                              JSON), written by the first keeper to start
//	<prefix>election/<lease hex>  aggregator candidates (concurrency.Election): the oldest
//	                              leads; value: the member id
//	<prefix>summaries/<member>    one keeper's summary for the aggregator, bound to the
//	                              publisher's lease
//	<prefix>stats/rebalances      the fleet's rebalance count, written by the leader
//	<prefix>discovered            the queues found in Redis for a layout without a registry
//	                              (Deckard's), written by the aggregator leader when they change
type Keys struct{ prefix string }

// NewKeys is the layout under prefix: PrefixDefault when empty, and a
// trailing '/' is added when missing.
func NewKeys(prefix string) Keys {
	if prefix == "" {
		prefix = PrefixDefault
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{prefix: prefix}
}

// Prefix is the prefix every key starts with, ending in '/'.
func (k Keys) Prefix() string { return k.prefix }

// Members is the prefix of the member keys.
func (k Keys) Members() string { return k.prefix + "members/" }

// Member is the member key of id.
func (k Keys) Member(id string) string { return k.Members() + id }

// MemberID is the id a member key names.
func (k Keys) MemberID(key string) string { return strings.TrimPrefix(key, k.Members()) }

// Owners is the prefix of the ownership keys.
func (k Keys) Owners() string { return k.prefix + "owners/" }

// Owner is the ownership key of unit.
func (k Keys) Owner(unit int) string { return k.Owners() + strconv.Itoa(unit) }

// OwnerUnit is the unit an ownership key names; false for anything else.
func (k Keys) OwnerUnit(key string) (int, bool) {
	s, ok := strings.CutPrefix(key, k.Owners())
	if !ok {
		return 0, false
	}
	u, err := strconv.Atoi(s)
	if err != nil || u < 0 || strconv.Itoa(u) != s {
		return 0, false
	}
	return u, true
}

// Ring is the key of the shared ring configuration.
func (k Keys) Ring() string { return k.prefix + "ring" }

// Election is the prefix concurrency.NewElection takes (it adds the '/').
func (k Keys) Election() string { return k.prefix + "election" }

// Summaries is the prefix of the per-keeper summaries.
func (k Keys) Summaries() string { return k.prefix + "summaries/" }

// Summary is the summary key of member.
func (k Keys) Summary(member string) string { return k.Summaries() + member }

// SummaryMember is the member a summary key names.
func (k Keys) SummaryMember(key string) string { return strings.TrimPrefix(key, k.Summaries()) }

// Rebalances is the key of the fleet's rebalance count.
func (k Keys) Rebalances() string { return k.prefix + "stats/rebalances" }

// Discovered is the key of the queue set the aggregator leader discovers in
// Redis for a layout that has no registry (see election.Discovery).
func (k Keys) Discovered() string { return k.prefix + "discovered" }
