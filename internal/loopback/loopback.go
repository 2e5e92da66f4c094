// Package loopback hands out free TCP ports on 127.0.0.1 for the servers
// that tests, benchmarks and the chaos harness start: every process they
// launch binds loopback only, on a port the kernel picked.
package loopback

import (
	"fmt"
	"net"
	"strconv"
)

// Ports asks the kernel for n distinct free ports on 127.0.0.1. It holds
// every listener until all n are known, so that one call never hands out the
// same port twice (a port closed and asked for again can come back). Another
// process may still take a port before the caller binds it; launchers retry.
func Ports(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Port is Ports(1).
func Port() (int, error) {
	ports, err := Ports(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// Addr is "127.0.0.1:port".
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
