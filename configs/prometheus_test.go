package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/keeperhq/keeper/internal/promexpr"
)

const (
	rulesFile     = root + "/configs/prometheus/keeper-rules.yaml"
	rulesTestFile = root + "/configs/prometheus/keeper-rules.test.yaml"
)

// The alerting rules through the real promtool: check rules (lint fatal),
// and the unit tests, in which every alert both fires and stays quiet.
func TestPrometheusRules(t *testing.T) {
	promtool := tool(t, "PROMTOOL_BIN", "promtool")
	run(t, promtool, "check", "rules", "--lint-fatal", rulesFile)
	run(t, promtool, "test", "rules", rulesTestFile)

	qs, err := promexpr.Rules(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	if len(qs) < 7 {
		t.Errorf("%d rules; the issue asks for 7 alerts", len(qs))
	}
	for _, q := range qs {
		name := q.Source[strings.LastIndex(q.Source, ": ")+2:]
		if fires[name] == 0 || quiet[name] == 0 {
			t.Errorf("alert %s: %d tests where it fires, %d where it stays quiet; want both", name, fires[name], quiet[name])
		}
	}
}

// Every query keeper ships (dashboard panels and variables, rules, the
// autoscaling examples) parses with promtool's PromQL parser, and names at
// least one metric.
func TestShippedQueriesParse(t *testing.T) {
	promtool := tool(t, "PROMTOOL_BIN", "promtool")
	qs, err := promexpr.Shipped(root)
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	var index strings.Builder
	for i, q := range qs {
		expr := promexpr.Expand(q.Expr)
		rules = append(rules, rule{Record: fmt.Sprintf("shipped:query:%d", i), Expr: expr})
		fmt.Fprintf(&index, "rule %d: %s\n", i, q.Source)
		sel, err := promexpr.Select(expr)
		if err != nil {
			t.Errorf("%s: %v", q.Source, err)
		} else if len(sel.Metrics()) == 0 {
			t.Errorf("%s: %q selects no metric", q.Source, q.Expr)
		}
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "shipped", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "shipped.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runErr(promtool, "check", "rules", file); err != nil {
		t.Fatalf("%v\nwhere\n%s", err, index.String())
	}
	t.Logf("%d shipped queries parse", len(qs))
}
