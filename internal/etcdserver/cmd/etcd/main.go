// Command etcd is the etcd server of the module's own etcd version
// (go.etcd.io/etcd/server/v3, the same as the client and the embedded
// server), built from this module because `go install` of the server module
// fails on its replace directives. The chaos harness runs a three-member
// cluster of it as separate processes; `make bin/etcd` builds it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
