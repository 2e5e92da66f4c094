package shard

import "testing"

func TestKeys(t *testing.T) {
	for _, prefix := range []string{"", "/keeper", "/keeper/"} {
		k := NewKeys(prefix)
		if k.Prefix() != "/keeper/" {
			t.Fatalf("NewKeys(%q).Prefix() = %q", prefix, k.Prefix())
		}
	}
	k := NewKeys("/p")
	for got, want := range map[string]string{
		k.Member("a"):                     "/p/members/a",
		k.Owner(42):                       "/p/owners/42",
		k.Ring():                          "/p/ring",
		k.Election():                      "/p/election",
		k.Summary("a"):                    "/p/summaries/a",
		k.Rebalances():                    "/p/stats/rebalances",
		k.MemberID(k.Member("x-1")):       "x-1",
		k.SummaryMember(k.Summary("x-1")): "x-1",
	} {
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if u, ok := k.OwnerUnit(k.Owner(98303)); !ok || u != 98303 {
		t.Fatalf("OwnerUnit(Owner(98303)) = %d, %v", u, ok)
	}
	for _, bad := range []string{"/p/owners/", "/p/owners/x", "/p/owners/-1", "/p/owners/01", "/q/owners/1", "/p/members/1"} {
		if u, ok := k.OwnerUnit(bad); ok {
			t.Fatalf("OwnerUnit(%q) = %d, true", bad, u)
		}
	}
}
