package memberid

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, ok := range []string{"keeper-0", "a", "pod.ns_1:x", strings.Repeat("a", MaxLen), New()} {
		if err := Validate(ok); err != nil {
			t.Fatalf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", "a\x00", "é", strings.Repeat("a", MaxLen+1)} {
		if err := Validate(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestNewIsRandom(t *testing.T) {
	a, b := New(), New()
	if len(a) != 16 || a == b {
		t.Fatalf("New() = %q, %q", a, b)
	}
}
