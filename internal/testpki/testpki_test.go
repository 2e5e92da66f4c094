package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
)

// The files New writes load as key pairs and verify against the CA for the
// use each is meant for, and not for the other.
func TestCertificatesVerifyForTheirUse(t *testing.T) {
	p := NewTB(t)
	caPEM, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA file holds no certificate")
	}
	check := func(certFile, keyFile string, usage x509.ExtKeyUsage, name string) error {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	if err := check(p.ServerCert, p.ServerKey, x509.ExtKeyUsageServerAuth, "127.0.0.1"); err != nil {
		t.Fatalf("server certificate for 127.0.0.1: %v", err)
	}
	if err := check(p.ClientCert, p.ClientKey, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	if err := check(p.ClientCert, p.ClientKey, x509.ExtKeyUsageServerAuth, ""); err == nil {
		t.Fatal("the client certificate verified as a server certificate")
	}
	// A second PKI is a different authority: its certificates must not
	// verify against the first CA, which is what a wrong-CA test relies on.
	other := NewTB(t)
	if err := check(other.ServerCert, other.ServerKey, x509.ExtKeyUsageServerAuth, "127.0.0.1"); err == nil {
		t.Fatal("a certificate from another CA verified")
	}
}
