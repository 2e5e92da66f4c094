package queue

import "testing"

func TestWakeChannelIsTheShardsWakeKey(t *testing.T) {
	s := Shard{Queue: "q", Partition: 7}
	if got, want := wakeChannel("p", s), keysFor("p", s).Wake; got != want {
		t.Fatalf("wakeChannel = %q, keysFor(...).Wake = %q", got, want)
	}
}

func TestShardFenceKeyIsTheShardsFence(t *testing.T) {
	s := Shard{Queue: "q", Partition: 7}
	if got, want := shardFenceKey("p", s), keysFor("p", s).Fence; got != want {
		t.Fatalf("shardFenceKey = %q, keysFor(...).Fence = %q", got, want)
	}
}
