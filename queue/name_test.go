package queue

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "orders", "Orders.v2", "tenant:42:jobs", "a_b-c", strings.Repeat("x", MaxNameLen)}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", "a b", "a#1", "{a}", "a}", "é", "a/b", "a\n", strings.Repeat("x", MaxNameLen+1)}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateName(%q) = %v, want ErrBadName", n, err)
		}
	}
}

func TestShardRoundTrip(t *testing.T) {
	s := Shard{Queue: "tenant:1.jobs", Partition: 17}
	got, err := ParseShard(s.String())
	if err != nil || got != s {
		t.Fatalf("ParseShard(%q) = %v, %v", s.String(), got, err)
	}
	for _, bad := range []string{"q", "q#", "q#-1", "q#01", "q#x", "#1", "a b#1"} {
		if _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
}

func TestKeysShareOneHashTag(t *testing.T) {
	k := keysFor("pfx", Shard{"q", 3})
	for _, key := range k.all() {
		if !strings.HasPrefix(key, "pfx:{q#3}:") {
			t.Errorf("key %q is outside the shard's hash tag", key)
		}
	}
}
