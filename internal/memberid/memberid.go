// Package memberid is a keeper's identity: the member id it registers in
// etcd under, campaigns with, and exports metrics as (service.instance.id).
// It is the pod name when one is given, random otherwise.
package memberid

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// MaxLen bounds an id: a Kubernetes pod name is at most 253 characters.
const MaxLen = 253

// New is a random 16-hex-digit id.
func New() string {
	var b [8]byte
	// crypto/rand does not fail on Linux (and panics itself where it
	// could); a fixed id would be worse, two keepers could share it.
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Validate keeps ids usable as one etcd key segment and as ring member
// names: 1..MaxLen printable ASCII characters, without spaces or '/'.
func Validate(id string) error {
	if id == "" || len(id) > MaxLen {
		return fmt.Errorf("member id %q: length must be 1..%d", id, MaxLen)
	}
	for _, r := range id {
		if r <= ' ' || r > '~' || r == '/' {
			return fmt.Errorf("member id %q: only printable ASCII without spaces or '/' is allowed", id)
		}
	}
	return nil
}
