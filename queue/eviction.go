package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrEvictionPolicy is returned by CheckEviction when the server may evict
// keys: an evicted fence, body or set breaks every guarantee keeper gives
// (no message lost, none in two sets, no stale owner writing).
var ErrEvictionPolicy = errors.New("redis may evict keys")

// EvictionPolicy reads the server's maxmemory-policy from INFO memory, which
// answers where CONFIG is disabled or renamed (managed Redis services); ""
// when INFO does not show it.
func EvictionPolicy(ctx context.Context, c redis.Cmdable) (string, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return "", fmt.Errorf("read maxmemory_policy: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "maxmemory_policy:"); ok {
			return v, nil
		}
	}
	return "", nil
}

// CheckEviction returns nil when the server's maxmemory-policy is
// noeviction, and an error wrapping ErrEvictionPolicy that names the policy
// otherwise (or says it could not be seen). Other errors are Redis's.
func CheckEviction(ctx context.Context, c redis.Cmdable) error {
	p, err := EvictionPolicy(ctx, c)
	switch {
	case err != nil:
		return err
	case p == "":
		return fmt.Errorf("%w: INFO memory does not show maxmemory_policy, keeper needs noeviction", ErrEvictionPolicy)
	case p != "noeviction":
		return fmt.Errorf("%w: maxmemory-policy is %s, keeper needs noeviction (an evicted fence, body or set loses messages)", ErrEvictionPolicy, p)
	}
	return nil
}
