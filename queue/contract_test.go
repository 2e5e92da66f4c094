package queue

import (
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var headerArg = regexp.MustCompile(`(KEYS|ARGV)\[(\d+)\]\s+([a-z_]+)`)

// statedArgs reads the KEYS and ARGV names that comment lines state, in
// index order, and fails on a gap or a repeat.
func statedArgs(t *testing.T, where string, lines []string, firstKey, firstArg int) (keys, argv []string) {
	t.Helper()
	for _, l := range lines {
		for _, m := range headerArg.FindAllStringSubmatch(l, -1) {
			i, _ := strconv.Atoi(m[2])
			list, first := &keys, firstKey
			if m[1] == "ARGV" {
				list, first = &argv, firstArg
			}
			if i != first+len(*list) {
				t.Errorf("%s states %s[%d] %s after %d of them from %d", where, m[1], i, m[3], len(*list), first)
			}
			*list = append(*list, m[3])
		}
	}
	return keys, argv
}

// header is the comment lines a script begins with, up to its "Returns".
func header(src string) []string {
	var out []string
	for _, l := range strings.Split(src, "\n") {
		if !strings.HasPrefix(l, "--") || strings.HasPrefix(l, "-- Returns") {
			break
		}
		out = append(out, l)
	}
	return out
}

// Every .lua header states exactly the keys (by name: keysUnder("")) and
// the arguments the Go side passes, in order; a housekeeping script states
// the fence head by reference to lib.lua, whose comments state it.
func TestScriptHeaders(t *testing.T) {
	names := keysUnder("")
	var libComments []string
	for _, l := range strings.Split(mustRead("lib"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "--") {
			libComments = append(libComments, l)
		}
	}
	headKeys, headArgv := statedArgs(t, "lib.lua", libComments, 1, 1)
	if !slices.Equal(headKeys, fenceKeys(names)) || !slices.Equal(headArgv, fenceArgv) {
		t.Errorf("lib.lua states the fence head %v %v, Go passes %v %v", headKeys, headArgv, fenceKeys(names), fenceArgv)
	}
	files, err := luaFS.ReadDir("lua")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{"lib": true}
	for _, s := range allScripts {
		seen[s.name] = true
		checkHeader(t, s.name, s.keys(names), s.argv, fenceKeys(names), fenceArgv)
	}
	seen["deckard_lib"] = true
	for _, s := range deckardScripts {
		seen[s.name] = true
		checkHeader(t, s.name, s.keys(deckardNames), s.argv, headKeys, headArgv)
	}
	for _, f := range files {
		if name := strings.TrimSuffix(f.Name(), ".lua"); !seen[name] {
			t.Errorf("lua/%s has no Go descriptor", f.Name())
		}
	}
}

// A multi-shard script steps through its keys and arguments by the counts
// it gives each_shard: they are the Go side's, so that no shard reads its
// neighbour's keys; a script of one shard does not step at all.
func TestMultiShardScriptsStepByTheirKeys(t *testing.T) {
	names := keysUnder("")
	step := regexp.MustCompile(`each_shard\((\d+), (\d+),`)
	for _, s := range allScripts {
		m := step.FindStringSubmatch(mustRead(s.name))
		if !s.multi {
			if m != nil {
				t.Errorf("%s.lua steps through shards, but Go calls it with one", s.name)
			}
			continue
		}
		if m == nil {
			t.Errorf("%s.lua is multi-shard in Go but does not call each_shard", s.name)
			continue
		}
		nk, _ := strconv.Atoi(m[1])
		na, _ := strconv.Atoi(m[2])
		if nk != len(s.keys(names)) || na != len(s.argv) {
			t.Errorf("%s.lua steps by %d keys and %d arguments, Go passes %d and %d a shard",
				s.name, nk, na, len(s.keys(names)), len(s.argv))
		}
	}
}

// deckardNames are the bare names the Deckard scripts' headers use.
var deckardNames = deckardKeys{Ready: "ready", Tmp: "tmp", LockAck: "lock_ack", LockNack: "lock_nack",
	LockAckScore: "lock_ack_score", LockNackScore: "lock_nack_score", Fence: "fence", FenceOwner: "owner",
	History: "history", Deleted: "deleted", Stats: "stats"}

// checkHeader holds the header of script name to the keys and argv Go
// passes, the fence head (headKeys, headArgv) stated by reference.
func checkHeader(t *testing.T, name string, want, wantArgv, headKeys, headArgv []string) {
	t.Helper()
	h := header(mustRead(name))
	fenced := slices.Equal(want[:min(len(headKeys), len(want))], headKeys) && len(want) > len(headKeys)
	statesHead := strings.Contains(strings.Join(h, "\n"), "KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua")
	if fenced != statesHead {
		t.Errorf("%s.lua: fenced %v, but its header says so: %v", name, fenced, statesHead)
	}
	var keys, argv []string
	if fenced {
		keys, argv = statedArgs(t, name+".lua", h, len(headKeys)+1, len(headArgv)+1)
		keys, argv = append(slices.Clone(headKeys), keys...), append(slices.Clone(headArgv), argv...)
	} else {
		keys, argv = statedArgs(t, name+".lua", h, 1, 1)
	}
	if !slices.Equal(keys, want) {
		t.Errorf("%s.lua states KEYS %v, Go passes %v", name, keys, want)
	}
	if !slices.Equal(argv, wantArgv) {
		t.Errorf("%s.lua states ARGV %v, Go passes %v", name, argv, wantArgv)
	}
}

// The counters the scripts raise are exactly the fields of Counters, under
// their JSON names, and the unlock-lag histogram's (LagHistogram, whose
// bucket fields unlock.lua names from the bounds; TestUnlockLagHistogram
// reads them back).
func TestCountersMatchScripts(t *testing.T) {
	lagFields := []string{lagSumField}
	for i := 0; i <= len(LagBoundsUs); i++ {
		lagFields = append(lagFields, lagField(i))
	}
	known := func(f string) bool { return slices.Contains(counterNames[:], f) || slices.Contains(lagFields, f) }
	raised := map[string]bool{}
	incr := regexp.MustCompile(`HINCRBY', [A-Z_]+(\[\d+\])?, '([a-z_]+)'`)
	checked := regexp.MustCompile(`check_counters\([A-Z_]+(\[\d+\])?, \{([^}]*)\}`)
	// unlock.lua lists the counters it raises with add_counters first.
	added := regexp.MustCompile(`local counters, deltas = \{([^}]*)\}`)
	var names []string
	for _, s := range allScripts {
		names = append(names, s.name)
	}
	for _, s := range deckardScripts {
		names = append(names, s.name)
	}
	for _, name := range names {
		src := mustRead(name)
		for _, m := range incr.FindAllStringSubmatch(src, -1) {
			raised[m[2]] = true
		}
		for _, m := range added.FindAllStringSubmatch(src, -1) {
			for _, f := range strings.Split(m[1], ",") {
				raised[strings.Trim(strings.TrimSpace(f), "'")] = true
			}
		}
		for _, m := range checked.FindAllStringSubmatch(src, -1) {
			for _, f := range strings.Split(m[2], ",") {
				if f = strings.Trim(strings.TrimSpace(f), "'"); !known(f) {
					t.Errorf("%s.lua checks counter %q, which Counters does not have", name, f)
				}
			}
		}
	}
	for name := range raised {
		if !known(name) {
			t.Errorf("a script raises counter %q, which Counters does not have", name)
		}
	}
	typ := reflect.TypeOf(Counters{})
	for i, name := range counterNames {
		if !raised[name] {
			t.Errorf("no script raises counter %q", name)
		}
		if tag := typ.Field(i).Tag.Get("json"); tag != name {
			t.Errorf("Counters field %s is %q in JSON, %q in the stats hash", typ.Field(i).Name, tag, name)
		}
	}
	if typ.NumField() != len(counterNames) {
		t.Errorf("Counters has %d fields, counterNames %d", typ.NumField(), len(counterNames))
	}
	// fields() points at each field in counterNames' order.
	var c Counters
	for i, f := range c.fields() {
		*f = int64(i + 1)
	}
	v := reflect.ValueOf(c)
	for i := range counterNames {
		if v.Field(i).Int() != int64(i+1) {
			t.Errorf("fields()[%d] is not field %s", i, typ.Field(i).Name)
		}
	}
}
