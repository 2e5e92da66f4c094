// Package promexpr reads the PromQL that keeper ships to operators — the
// Grafana dashboard, the Prometheus alerting rules and the autoscaling
// examples of the Helm chart — and names the metrics and labels each query
// selects, so that tests can hold every query to a real scrape of the
// collector (a renamed metric must fail a test, not blank a panel) and to
// promtool's parser.
package promexpr

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Query is one PromQL expression and where it is shipped.
type Query struct {
	// Source names the file and the place in it (panel, alert, trigger).
	Source string
	// Expr is the expression as written, Grafana variables and adapter
	// templates included.
	Expr string
	// Labels are label names the query needs on its metrics beyond its
	// matchers (a Grafana label_values variable's label).
	Labels []string
}

// Shipped is every query under the repository root: the dashboard, the
// rules and the chart's examples.
func Shipped(root string) ([]Query, error) {
	var all []Query
	for _, load := range []func(string) ([]Query, error){
		func(r string) ([]Query, error) { return Dashboard(filepath.Join(r, "configs/grafana/keeper.json")) },
		func(r string) ([]Query, error) {
			return Rules(filepath.Join(r, "configs/prometheus/keeper-rules.yaml"))
		},
		func(r string) ([]Query, error) { return Examples(filepath.Join(r, "configs/helm/keeper/examples")) },
	} {
		qs, err := load(root)
		if err != nil {
			return nil, err
		}
		all = append(all, qs...)
	}
	return all, nil
}

// Dashboard reads every panel target and every query variable of a Grafana
// dashboard (rows' nested panels included).
func Dashboard(path string) ([]Query, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var qs []Query
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				qs = append(qs, Query{Source: fmt.Sprintf("%s: panel %q", path, p.Title), Expr: t.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// The query is a string, or an object with a "query" string
		// (newer Grafana).
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("%s: variable %s: query is neither a string nor {query}", path, v.Name)
			}
			q = obj.Query
		}
		expr, label, err := labelValues(q)
		if err != nil {
			return nil, fmt.Errorf("%s: variable %s: %w", path, v.Name, err)
		}
		qs = append(qs, Query{Source: fmt.Sprintf("%s: variable %s", path, v.Name), Expr: expr, Labels: []string{label}})
	}
	return qs, nil
}

// labelValues splits Grafana's label_values(<selector>, <label>).
func labelValues(q string) (expr, label string, err error) {
	q = strings.TrimSpace(q)
	if !strings.HasPrefix(q, "label_values(") || !strings.HasSuffix(q, ")") {
		return "", "", fmt.Errorf("want label_values(selector, label), got %q", q)
	}
	inner := q[len("label_values(") : len(q)-1]
	i := strings.LastIndex(inner, ",")
	if i < 0 {
		return "", "", fmt.Errorf("label_values without a selector: %q", q)
	}
	return strings.TrimSpace(inner[:i]), strings.TrimSpace(inner[i+1:]), nil
}

// Rules reads every rule's expression from a Prometheus rules file.
func Rules(path string) ([]Query, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var qs []Query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			qs = append(qs, Query{Source: fmt.Sprintf("%s: %s%s", path, r.Alert, r.Record), Expr: r.Expr})
		}
	}
	return qs, nil
}

// Examples reads the queries of the autoscaling examples: KEDA prometheus
// triggers, and prometheus-adapter external rules carried in a ConfigMap.
func Examples(dir string) ([]Query, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var qs []Query
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		for {
			var doc struct {
				Kind string `yaml:"kind"`
				Spec struct {
					Triggers []struct {
						Type     string            `yaml:"type"`
						Metadata map[string]string `yaml:"metadata"`
					} `yaml:"triggers"`
				} `yaml:"spec"`
				Data map[string]string `yaml:"data"`
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			switch doc.Kind {
			case "ScaledObject":
				for i, t := range doc.Spec.Triggers {
					if t.Type == "prometheus" {
						qs = append(qs, Query{Source: fmt.Sprintf("%s: trigger %d", path, i), Expr: t.Metadata["query"]})
					}
				}
			case "ConfigMap":
				for key, text := range doc.Data {
					var adapter struct {
						ExternalRules []struct {
							SeriesQuery  string `yaml:"seriesQuery"`
							MetricsQuery string `yaml:"metricsQuery"`
						} `yaml:"externalRules"`
					}
					if err := yaml.Unmarshal([]byte(text), &adapter); err != nil {
						return nil, fmt.Errorf("%s: %s: %w", path, key, err)
					}
					for i, r := range adapter.ExternalRules {
						src := fmt.Sprintf("%s: %s externalRules[%d]", path, key, i)
						qs = append(qs, Query{Source: src + " seriesQuery", Expr: r.SeriesQuery},
							Query{Source: src + " metricsQuery", Expr: r.MetricsQuery})
					}
				}
			}
		}
	}
	return qs, nil
}

var (
	// Grafana's range variables stand for a duration.
	grafanaRange = regexp.MustCompile(`\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}`)
	// prometheus-adapter's template: label matchers, possibly none.
	adapterMatchers = regexp.MustCompile(`,?\s*<<\.LabelMatchers>>`)
)

// Expand turns a shipped expression into plain PromQL: Grafana's range
// variables become 5m and prometheus-adapter's <<.LabelMatchers>> becomes no
// matcher. Other Grafana variables only appear inside label matcher
// strings (regexes such as "$queue"), which PromQL takes as they are.
func Expand(expr string) string {
	expr = grafanaRange.ReplaceAllString(expr, "5m")
	expr = adapterMatchers.ReplaceAllString(expr, "")
	return strings.ReplaceAll(expr, "{}", "")
}

// Selector is one vector selector of an expression.
type Selector struct {
	Metric string
	// Labels are the label names of its matchers (__name__ excluded).
	Labels []string
}

// Selection is what an expression reads.
type Selection struct {
	Selectors []Selector
	// Grouping are the label names of by/without/on/ignoring/group_left/
	// group_right clauses.
	Grouping []string
}

// Metrics are the distinct metric names, sorted.
func (s Selection) Metrics() []string {
	seen := map[string]bool{}
	var out []string
	for _, sel := range s.Selectors {
		if !seen[sel.Metric] {
			seen[sel.Metric] = true
			out = append(out, sel.Metric)
		}
	}
	sort.Strings(out)
	return out
}

var keywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "start": true, "end": true,
}

var groupingKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// Select lexes a PromQL expression (after Expand) and returns its
// selectors and grouping labels. It expects a syntactically valid
// expression (promtool checks that); it refuses what it cannot read rather
// than guess: a selector without a metric name, an unterminated string.
func Select(expr string) (Selection, error) {
	toks, err := lex(expr)
	if err != nil {
		return Selection{}, err
	}
	var s Selection
	next := func(i int) token {
		if i+1 < len(toks) {
			return toks[i+1]
		}
		return token{}
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == tIdent && groupingKeywords[t.text] && next(i).text == "(":
			j := i + 2
			for ; j < len(toks) && toks[j].text != ")"; j++ {
				if toks[j].kind == tIdent {
					s.Grouping = append(s.Grouping, toks[j].text)
				}
			}
			i = j
		case t.kind == tIdent && (keywords[t.text] || next(i).text == "(" || next(i).text == "by" || next(i).text == "without"):
			// a keyword, a function or an aggregation (sum(...), sum by (...))
		case t.kind == tIdent:
			sel := Selector{Metric: t.text}
			if next(i).text == "{" {
				labels, name, end, err := matchers(toks, i+1)
				if err != nil {
					return Selection{}, err
				}
				if name != "" {
					return Selection{}, fmt.Errorf("%s: both a metric name and __name__", t.text)
				}
				sel.Labels, i = labels, end
			}
			s.Selectors = append(s.Selectors, sel)
		case t.text == "{":
			labels, name, end, err := matchers(toks, i)
			if err != nil {
				return Selection{}, err
			}
			if name == "" {
				return Selection{}, fmt.Errorf("a selector without a metric name in %q", expr)
			}
			s.Selectors = append(s.Selectors, Selector{Metric: name, Labels: labels})
			i = end
		case t.text == "[":
			// a range or a subquery's range and step
			for i < len(toks) && toks[i].text != "]" {
				i++
			}
		}
	}
	return s, nil
}

// matchers reads {a="x", b=~"y"} starting at toks[i] == "{" and returns the
// label names, the value of an equality __name__ matcher, and the index of
// the closing brace.
func matchers(toks []token, i int) (labels []string, name string, end int, err error) {
	for j := i + 1; j < len(toks); j++ {
		switch t := toks[j]; {
		case t.text == "}":
			return labels, name, j, nil
		case t.kind == tIdent || t.kind == tString:
			label := t.text
			if t.kind == tString {
				label = t.value // a quoted (UTF-8) label name
			}
			if j+2 >= len(toks) || toks[j+1].kind != tOp || toks[j+2].kind != tString {
				return nil, "", 0, fmt.Errorf("matcher %s: want label op \"value\"", label)
			}
			if label == "__name__" {
				if toks[j+1].text == "=" {
					name = toks[j+2].value
				}
			} else {
				labels = append(labels, label)
			}
			j += 2
		case t.text == ",":
		default:
			return nil, "", 0, fmt.Errorf("unexpected %q in a selector", t.text)
		}
	}
	return nil, "", 0, errors.New("unterminated selector")
}

type tokenKind int

const (
	tIdent tokenKind = iota + 1
	tString
	tNumber
	tOp
	tPunct
)

type token struct {
	kind  tokenKind
	text  string
	value string // a string's contents
}

func lex(s string) ([]token, error) {
	var toks []token
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // a comment runs to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			var val strings.Builder
			for j < len(s) && s[j] != c {
				if s[j] == '\\' && c != '`' && j+1 < len(s) {
					j++
				}
				val.WriteByte(s[j])
				j++
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string in %q", s)
			}
			toks = append(toks, token{kind: tString, text: s[i : j+1], value: val.String()})
			i = j + 1
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			j := i
			for j < len(s) && (isIdent(s[j]) || s[j] == '.' || (s[j] == '+' || s[j] == '-') && (s[j-1] == 'e' || s[j-1] == 'E')) {
				j++
			}
			toks = append(toks, token{kind: tNumber, text: s[i:j]})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			toks = append(toks, token{kind: tIdent, text: s[i:j]})
			i = j
		case strings.ContainsRune("(){}[],", rune(c)):
			toks = append(toks, token{kind: tPunct, text: string(c)})
			i++
		default:
			// Operators: = != =~ !~ == <= >= < > + - * / % ^ @ and Grafana's $.
			j := i + 1
			if strings.ContainsRune("=!<>", rune(c)) && j < len(s) && strings.ContainsRune("=~", rune(s[j])) {
				j++
			}
			toks = append(toks, token{kind: tOp, text: s[i:j]})
			i = j
		}
	}
	return toks, nil
}
