package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`{"partitions":4,"lease":"1.5s","ttl":60000,"max_size":10,"max_inflight":5}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Partitions != 4 || c.Lease.D() != 1500*time.Millisecond || c.TTL.D() != time.Minute || c.MaxSize != 10 || c.MaxInFlight != 5 {
		t.Fatalf("parsed %+v", c)
	}
	d := Config{}.WithDefaults()
	if d.Partitions != 1 || d.Lease.D() != DefaultLease || d.MaxPayloadBytes != DefaultMaxPayload {
		t.Fatalf("defaults %+v", d)
	}
	for in, want := range map[string]string{
		`{"partitons":2}`:                   "unknown field",
		`{"partitions":-1}`:                 "partitions",
		`{"partitions":99999}`:              "partitions",
		`{"lease":"0.1ms"}`:                 "lease",
		`{"lease":"13h"}`:                   "lease",
		`{"lease":"soon"}`:                  "bad duration",
		`{"max_size":-5,"max_inflight":-1}`: "max_inflight",
		`{"max_payload_bytes":1e12}`:        "max_payload_bytes",
		`{"partitions":1} {}`:               "trailing",
		`not json`:                          "invalid character",
	} {
		_, err := ParseConfig([]byte(in))
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want ErrBadConfig mentioning %q", in, err, want)
		}
	}
}

func TestInFlightShare(t *testing.T) {
	c := Config{Partitions: 3, MaxInFlight: 10}
	total := 0
	for p := 0; p < 3; p++ {
		total += c.InFlightShare(p)
	}
	if total != 10 {
		t.Fatalf("shares sum to %d, want 10", total)
	}
	if got := (Config{Partitions: 4, MaxInFlight: 2}).InFlightShare(3); got != -1 {
		t.Fatalf("partition beyond a small cap gets %d, want -1 (none)", got)
	}
	if got := (Config{Partitions: 4}).InFlightShare(0); got != 0 {
		t.Fatalf("no cap gives %d", got)
	}
}
