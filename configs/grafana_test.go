package configs

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"

	"github.com/keeperhq/keeper/internal/promexpr"
)

// The dashboard decodes strictly into Grafana's own dashboard schema (the
// foundation SDK's types: unknown fields, bad panel options and bad
// Prometheus targets are refused), every query goes to the dashboard's
// Prometheus data source variable, panels do not overlap, and it has a
// panel for each thing the fleet, queue and keeper sections must show.
// That each metric exists in a real scrape is checked by chaos's
// TestShippedQueriesMatchTheScrape.
func TestGrafanaDashboard(t *testing.T) {
	file := filepath.Join(root, "configs/grafana/keeper.json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := grafanaStrict(data); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	// The strict decoder refuses what Grafana's schema does not know, down
	// to a Prometheus target.
	bad := strings.Replace(string(data), `"refId": "A",`, `"refId": "A", "exprr": "up",`, 1)
	if err := grafanaStrict([]byte(bad)); err == nil || !strings.Contains(err.Error(), "exprr") {
		t.Fatalf("an unknown target field was accepted: %v", err)
	}

	// The SDK's decoded panels cannot be used (it drops every panel and
	// target it decoded, taking its own empty error list for a failure), so
	// the checks below read the same JSON plainly.
	type ref struct{ Type, UID string }
	type panel struct {
		Type, Title, Description string
		ID                       *uint32
		Datasource               *ref
		GridPos                  *struct{ H, W, X, Y uint32 }
		Panels                   []json.RawMessage
		Targets                  []struct {
			Expr       string
			Datasource *ref
		}
	}
	var d struct {
		UID, Title string
		Panels     []panel
		Templating struct {
			List []struct {
				Name, Type string
				Query      any
			}
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	var dsVar bool
	for _, v := range d.Templating.List {
		dsVar = dsVar || v.Type == "datasource" && v.Name == "datasource" && v.Query == "prometheus"
	}
	if !dsVar {
		t.Error("no datasource variable of type prometheus")
	}
	isVar := func(r *ref) bool { return r != nil && r.Type == "prometheus" && r.UID == "${datasource}" }

	// Each section (row) and the metrics its panels must query.
	want := map[string][]string{
		"Fleet":   {"keeper_cluster_members", "keeper_member_leader", "keeper_cluster_rebalances_total", "keeper_cluster_shards_unowned"},
		"Queues":  {"keeper_queue_messages", "keeper_queue_oldest_ready_age_seconds", "keeper_unlock_lag_seconds_bucket", "keeper_queue_unlocked_total", "keeper_queue_requeued_total", "keeper_queue_expired_total", "keeper_queue_dead_lettered_total"},
		"Keepers": {"keeper_member_shards_owned", "keeper_task_pass_duration_seconds_bucket", "keeper_errors_total", "keeper_fence_refusals_total"},
	}
	queried := map[string]map[string]bool{}
	quantiles := map[string]bool{}
	ids := map[uint32]string{}
	type cell struct{ x, y uint32 }
	taken := map[cell]string{}
	section := ""
	for _, p := range d.Panels {
		if g := p.GridPos; g == nil || g.W == 0 || g.H == 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, g)
		} else {
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := taken[cell{x, y}]; ok {
						t.Errorf("panel %q overlaps %q", p.Title, other)
					}
					taken[cell{x, y}] = p.Title
				}
			}
		}
		if p.ID == nil {
			t.Errorf("panel %q has no id", p.Title)
		} else if other, dup := ids[*p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", p.Title, other, *p.ID)
		} else {
			ids[*p.ID] = p.Title
		}
		if p.Type == "row" {
			section = p.Title
			queried[section] = map[string]bool{}
			if len(p.Panels) > 0 {
				t.Errorf("row %q: keep panels at the top level (rows expanded)", section)
			}
			continue
		}
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if !isVar(p.Datasource) {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if !isVar(q.Datasource) {
				t.Errorf("panel %q: target datasource %+v", p.Title, q.Datasource)
			}
			sel, err := promexpr.Select(promexpr.Expand(q.Expr))
			if err != nil {
				t.Errorf("panel %q: %v", p.Title, err)
				continue
			}
			for _, m := range sel.Metrics() {
				if queried[section] != nil {
					queried[section][m] = true
				}
			}
			if strings.Contains(q.Expr, "keeper_unlock_lag_seconds_bucket") {
				for _, qt := range []string{"0.5", "0.99"} {
					if strings.Contains(q.Expr, "histogram_quantile("+qt+",") {
						quantiles[qt] = true
					}
				}
			}
		}
	}
	for sec, metrics := range want {
		if queried[sec] == nil {
			t.Errorf("no %q row", sec)
			continue
		}
		for _, m := range metrics {
			if !queried[sec][m] {
				t.Errorf("row %q has no panel on %s", sec, m)
			}
		}
	}
	if !quantiles["0.5"] || !quantiles["0.99"] {
		t.Errorf("unlock lag needs p50 and p99 from the histogram, got %v", quantiles)
	}
}

// grafanaStrict decodes a dashboard strictly with the foundation SDK and
// its panel and data source plugins.
func grafanaStrict(data []byte) error {
	plugins.RegisterDefaultPlugins()
	//lint:ignore SA1019 the classic JSON model is what Grafana's import takes; dashboardv2 is the newer resource format
	var d dashboard.Dashboard
	err := d.UnmarshalJSONStrict(data)
	// The SDK returns its error list even when it is empty (a typed nil).
	if be := (cog.BuildErrors)(nil); errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}
