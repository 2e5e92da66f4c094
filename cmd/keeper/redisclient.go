package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"
)

// redisClient connects to the Redis of c at addrs: one address makes a plain
// client, several a cluster client. `keeper run`, `keeper status` and
// `keeper queue` all build their client here, so an operator command reaches
// every Redis the daemon can (ACL user, password, TLS, client certificate).
// It does not dial: the caller decides whether an unreachable server is
// fatal.
func redisClient(c RedisConfig, addrs []string) (redis.UniversalClient, error) {
	opt := &redis.UniversalOptions{Addrs: addrs, Username: c.Username, Password: c.Password}
	if c.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("redis CA: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("redis CA %s holds no PEM certificate", c.CAFile)
			}
		}
		if c.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("redis client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		opt.TLSConfig = tc
	}
	return redis.NewUniversalClient(opt), nil
}
