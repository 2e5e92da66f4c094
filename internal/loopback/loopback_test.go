package loopback

import (
	"net"
	"testing"
)

func TestPortsAreDistinctAndBindable(t *testing.T) {
	ports, err := Ports(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("port %d is zero or handed out twice in %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", Addr(p))
		if err != nil {
			t.Fatalf("port %d not bindable after Ports returned: %v", p, err)
		}
		_ = l.Close()
	}
}
