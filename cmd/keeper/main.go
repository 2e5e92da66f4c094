// Command keeper is the housekeeping daemon for Redis-backed message queues
// and its operator CLI.
package main

import (
	"fmt"
	"os"
)

func main() {
	os.Exit(realMain(os.Args[1:]))
}

func realMain(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runCmd(args[1:])
	case "status":
		err = statusCmd(args[1:], os.Stdout)
	case "queue":
		err = queueCmd(args[1:], os.Environ(), os.Stdout)
	case "chaos":
		err = chaosCmd(args[1:], os.Stdout)
	case "bench":
		err = benchCmd(args[1:], os.Stdout)
	case "version", "--version":
		fmt.Println(versionString())
	default:
		usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keeper:", err)
		return 1
	}
	return 0
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: keeper <command> [flags]

  run       the daemon (keeper run -h lists its settings)
  status    the fleet as etcd has it: members, ring, owned units and shards
  queue     create|update|list|inspect|stats|audit|delete|reset-fences queues
  bench     benchmark scenarios (keeper bench -h)
  chaos     a fleet of keeper processes under random faults, checked for invariants
  version   print the version`)
}
