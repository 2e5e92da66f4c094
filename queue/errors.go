package queue

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Errors callers can test with errors.Is. Scripts report the Redis-side ones
// as error replies starting with a KEEPER_* code; asError maps them back.
var (
	ErrBadName      = errors.New("bad queue name")
	ErrBadConfig    = errors.New("bad queue config")
	ErrBadMessage   = errors.New("bad message")
	ErrUnknownQueue = errors.New("unknown queue")
	ErrQueueExists  = errors.New("queue already exists")
	// ErrTooBig: the payload is over the queue's max_payload_bytes.
	ErrTooBig = errors.New("payload too big")
	// ErrStale: the delivery token no longer matches: the lease was
	// recovered (and the message perhaps redelivered), or the message was
	// acked, expired or trimmed. Nothing was changed.
	ErrStale = errors.New("stale delivery")
	// ErrNotFound: no message with that id in the queue.
	ErrNotFound = errors.New("message not found")
	// ErrWrongType: a key of the shard holds a value of another type
	// (someone else wrote there). The script refused before writing.
	ErrWrongType = errors.New("wrong-typed redis key")
	// ErrStaleConfig: the queue's shards were set to a newer config than
	// the client could read, even after reloading it for about a second: a
	// config update set the shards and did not publish. Running the update
	// again repairs it. Nothing was changed.
	ErrStaleConfig = errors.New("queue config older than its shards")
	// ErrClaimNotReplicated: a claim (the first probe of a shard a keeper
	// takes) raised the fence on a primary that has replicas, and no
	// replica acknowledged it in time; a failover could lose the fence, so
	// the claim is not trusted and is made again.
	ErrClaimNotReplicated = errors.New("claim not acknowledged by a replica")
)

// staleConfigError is a shard refusing a client's config as older than the
// generation the shard was set to; the client reloads the config.
type staleConfigError struct {
	Shard      Shard
	Generation int64 // the shard's
}

func (e *staleConfigError) Error() string {
	return fmt.Sprintf("shard %s is at config generation %d", e.Shard, e.Generation)
}

func (e *staleConfigError) Is(target error) bool { return target == ErrStaleConfig }

// FencedError reports that Redis refused a housekeeping write because a
// higher ownership token has already written to the shard, or the same
// token from another owner.
type FencedError struct {
	Shard Shard
	Token int64 // the token we presented
	Fence int64 // the shard's fence in Redis
	// Owner is the identity that holds the fence ("" when none is
	// recorded, or the owner was anonymous).
	Owner string
}

func (e *FencedError) Error() string {
	if e.Token == e.Fence {
		return fmt.Sprintf("shard %s: token %d refused, the fence holds the same token for another owner (%q)",
			e.Shard, e.Token, e.Owner)
	}
	return fmt.Sprintf("shard %s: token %d refused, fence is %d", e.Shard, e.Token, e.Fence)
}

// asError turns a KEEPER_* error reply into a typed error; other errors are
// returned unchanged.
func asError(err error, s Shard, token int64) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	code, rest, _ := strings.Cut(msg, " ")
	switch code {
	case "KEEPER_FENCED":
		fence, owner, _ := strings.Cut(rest, " ")
		f, _ := strconv.ParseInt(strings.TrimSpace(fence), 10, 64)
		return &FencedError{Shard: s, Token: token, Fence: f, Owner: owner}
	case "KEEPER_STALE":
		return fmt.Errorf("%w: shard %s: %s", ErrStale, s, rest)
	case "KEEPER_TOOBIG":
		return fmt.Errorf("%w: shard %s: %s", ErrTooBig, s, rest)
	case "KEEPER_WRONGTYPE":
		return fmt.Errorf("%w: shard %s: %s", ErrWrongType, s, rest)
	case "KEEPER_STALECONFIG":
		g, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		return &staleConfigError{Shard: s, Generation: g}
	case "KEEPER_DELETED":
		return fmt.Errorf("%w: shard %s: %s", ErrUnknownQueue, s, rest)
	case "KEEPER_BADARG":
		return fmt.Errorf("%w: shard %s: %s", ErrBadMessage, s, rest)
	case "KEEPER_NOTFOUND":
		return fmt.Errorf("%w: shard %s: %s", ErrNotFound, s, rest)
	}
	if strings.HasPrefix(msg, "WRONGTYPE") {
		return fmt.Errorf("%w: shard %s: %s", ErrWrongType, s, msg)
	}
	return fmt.Errorf("shard %s: %w", s, err)
}
