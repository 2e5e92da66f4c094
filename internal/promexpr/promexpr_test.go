package promexpr

import (
	"reflect"
	"testing"
)

func TestSelect(t *testing.T) {
	for _, c := range []struct {
		expr     string
		metrics  []string
		labels   map[string][]string
		grouping []string
	}{
		{expr: `max(keeper_cluster_members)`, metrics: []string{"keeper_cluster_members"}},
		{expr: `histogram_quantile(0.99, sum by (le, queue) (rate(keeper_unlock_lag_seconds_bucket{queue=~"$queue"}[5m]))) > 1`,
			metrics: []string{"keeper_unlock_lag_seconds_bucket"}, labels: map[string][]string{"keeper_unlock_lag_seconds_bucket": {"queue"}},
			grouping: []string{"le", "queue"}},
		{expr: `(sum(keeper_member_leader) or vector(0)) < 1`, metrics: []string{"keeper_member_leader"}},
		{expr: "sum without (shard) (keeper_queue_messages{state!=\"dead\", queue=\"a\"}) / on (queue) group_left keeper_cluster_queue_shards",
			metrics: []string{"keeper_cluster_queue_shards", "keeper_queue_messages"}, labels: map[string][]string{"keeper_queue_messages": {"state", "queue"}},
			grouping: []string{"shard", "queue"}},
		{expr: `{__name__="keeper_queue_messages", state="ready"} offset 5m`, metrics: []string{"keeper_queue_messages"},
			labels: map[string][]string{"keeper_queue_messages": {"state"}}},
		{expr: `max(max_over_time(keeper_cluster_members[15m:1m])) # a comment naming not_a_metric`, metrics: []string{"keeper_cluster_members"}},
		{expr: `time() - max by (service_instance_id, task) (keeper_task_last_success_timestamp_seconds) > 1e3`,
			metrics: []string{"keeper_task_last_success_timestamp_seconds"}, grouping: []string{"service_instance_id", "task"}},
	} {
		s, err := Select(c.expr)
		if err != nil {
			t.Errorf("%s: %v", c.expr, err)
			continue
		}
		if got := s.Metrics(); !reflect.DeepEqual(got, c.metrics) {
			t.Errorf("%s: metrics %v, want %v", c.expr, got, c.metrics)
		}
		for _, sel := range s.Selectors {
			if want := c.labels[sel.Metric]; !reflect.DeepEqual(sel.Labels, want) && (len(sel.Labels) != 0 || len(want) != 0) {
				t.Errorf("%s: %s labels %v, want %v", c.expr, sel.Metric, sel.Labels, want)
			}
		}
		if !reflect.DeepEqual(s.Grouping, c.grouping) && (len(s.Grouping) != 0 || len(c.grouping) != 0) {
			t.Errorf("%s: grouping %v, want %v", c.expr, s.Grouping, c.grouping)
		}
	}
}

func TestSelectRefusesWhatItCannotRead(t *testing.T) {
	for _, expr := range []string{
		`{state="ready"}`,                     // no metric name
		`keeper_queue_messages{state="ready"`, // unterminated
		`keeper_queue_messages{state="ready}`, // unterminated string
		`keeper_queue_messages{state}`,        // not a matcher
	} {
		if _, err := Select(expr); err == nil {
			t.Errorf("%s: accepted", expr)
		}
	}
}

func TestExpand(t *testing.T) {
	for in, want := range map[string]string{
		`rate(x[$__rate_interval])`: `rate(x[5m])`,
		`rate(x[${__interval}])`:    `rate(x[5m])`,
		`sum by (queue) (keeper_queue_messages{state="ready",<<.LabelMatchers>>})`: `sum by (queue) (keeper_queue_messages{state="ready"})`,
		`sum(keeper_queue_messages{<<.LabelMatchers>>})`:                           `sum(keeper_queue_messages)`,
	} {
		if got := Expand(in); got != want {
			t.Errorf("Expand(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestLabelValues(t *testing.T) {
	expr, label, err := labelValues(`label_values(keeper_queue_messages{state="ready"}, queue)`)
	if err != nil || expr != `keeper_queue_messages{state="ready"}` || label != "queue" {
		t.Fatalf("%q %q %v", expr, label, err)
	}
	if _, _, err := labelValues(`query_result(up)`); err == nil {
		t.Fatal("accepted a query that is not label_values")
	}
}
