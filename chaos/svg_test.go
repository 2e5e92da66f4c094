package chaos

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"os"
	"strings"
	"testing"
)

// syntheticReport is a run of every fault kind with made-up figures: one
// keeper killed (its shards unowned for three seconds), a second keeper
// briefly claiming shards it lost, lag rising during the faults.
func syntheticReport() RunReport {
	rep := RunReport{Seed: 42, Shards: 60, DurationS: 150, SettleMaxS: 4, ByKind: map[string]KindStats{},
		Settings: Settings{SessionTTL: "3s"}}
	for i, k := range AllFaults {
		f := FaultRecord{Kind: k, Target: "k1", At: float64(i * 10), HeldS: 4, SettleS: 2.5, SettleFrom: "fault",
			SettledAt: float64(i*10) + 2.5}
		if k == FaultEtcdQuorum {
			f.SettleFrom, f.Late = "heal", true
		}
		rep.Faults = append(rep.Faults, f)
		rep.ByKind[k] = KindStats{Count: 1, SettleP50: 2.5, SettleMax: 2.5}
	}
	rep.FaultKinds = len(rep.ByKind)
	for t := 0.0; t < 150; t += 0.25 {
		s := OwnSample{At: t, Owned: map[string]int{"k2": 20, "k3": 20}}
		switch {
		case t < 30:
			s.Owned["k1"] = 20
		case t < 33:
			s.Unowned = 20
		default:
			s.Owned["k4"] = 20
		}
		if t > 60 && t < 61 {
			s.Multi = 5
		}
		rep.Timeline.Samples = append(rep.Timeline.Samples, s)
		rep.Timeline.Lags = append(rep.Timeline.Lags, LagSample{At: t, LagMs: 20 + 3000*math.Exp(-math.Mod(t, 10))})
	}
	rep.Timeline.Shards = 60
	rep.Invariants = []Invariant{{Name: "one owner per shard within TTL+1s after each fault", OK: true, Detail: "15 faults"},
		{Name: "no message lost, none in two sets, counters balance", OK: false, Detail: "1 problem"}}
	rep.Violations = 1
	return rep
}

// The picture is well-formed SVG that names every fault kind and keeper;
// KEEPER_SVG_OUT keeps a copy to look at.
func TestWriteSVG(t *testing.T) {
	var b bytes.Buffer
	if err := WriteSVG(&b, syntheticReport()); err != nil {
		t.Fatal(err)
	}
	if p := os.Getenv("KEEPER_SVG_OUT"); p != "" {
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("not well-formed: %v", err)
		}
	}
	svg := b.String()
	for _, want := range append(append([]string{}, AllFaults...), "k1", "k2", "k4", "FAIL: 1 violation(s)", "TTL + 1s", "came back late") {
		if !strings.Contains(svg, want) {
			t.Errorf("picture lacks %q", want)
		}
	}
}
