package configs

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	yamlv3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = root + "/configs/helm/keeper"

// renderCase is one `helm template` of the chart.
type renderCase struct {
	name string
	args []string
	// manifest is the file in configs/kubernetes/ that must equal this
	// rendering ("" for none).
	manifest string
	kind     string // Deployment or DaemonSet
	// secretFiles is how many *_file settings keeper.yaml must have, each
	// backed by a mounted secret.
	secretFiles int
}

var renderCases = []renderCase{
	{name: "deployment", manifest: "keeper-deployment.yaml", kind: "Deployment"},
	{name: "daemonset", args: []string{"--set", "mode=daemonset"}, manifest: "keeper-daemonset.yaml", kind: "DaemonSet"},
	{name: "sidecar", args: []string{"--set", "mode=sidecar"}, manifest: "keeper-sidecar.yaml", kind: "Deployment"},
	{name: "tls", args: []string{"-f", chartDir + "/examples/values-tls.yaml"}, manifest: "keeper-deployment-tls.yaml",
		kind: "Deployment", secretFiles: 8},
	{name: "daemonset-tls", args: []string{"--set", "mode=daemonset", "-f", chartDir + "/examples/values-tls.yaml"},
		kind: "DaemonSet", secretFiles: 8},
	{name: "sentinel", args: []string{"-f", chartDir + "/examples/values-sentinel.yaml"}, manifest: "keeper-deployment-sentinel.yaml",
		kind: "Deployment", secretFiles: 2},
	{name: "sentinel-tls", args: []string{"--set", "mode=daemonset", "-f", chartDir + "/examples/values-tls.yaml",
		"-f", chartDir + "/examples/values-sentinel.yaml"}, kind: "DaemonSet", secretFiles: 9},
	{name: "sidecar-layout", args: []string{"--set", "mode=sidecar", "--set", "redis.layout=deckard",
		"--set", "redis.password.secretName=rpw"}, kind: "Deployment", secretFiles: 1},
	{name: "deckard-layout", args: []string{"--set", "redis.layout=deckard", "--set", "deckard.keyspaceEvents=off",
		"--set", "deckard.discoveryInterval=1h", "--set", "deckard.pollMin=10ms", "--set", "deckard.pollMax=1m"},
		kind: "Deployment"},
}

// The chart through the real helm: lint, then each mode and the TLS values
// rendered, every object decoded strictly into the Kubernetes API types, and
// keeper's contract checked on each; the manifests in configs/kubernetes/
// are the chart's output for the default values of each mode.
func TestHelmChart(t *testing.T) {
	helm := tool(t, "HELM_BIN", "helm")
	run(t, helm, "lint", "--strict", chartDir)
	run(t, helm, "lint", "--strict", chartDir, "-f", chartDir+"/examples/values-tls.yaml")
	run(t, helm, "lint", "--strict", chartDir, "-f", chartDir+"/examples/values-sentinel.yaml")
	budget := shutdownBudget(t)
	for _, c := range renderCases {
		t.Run(c.name, func(t *testing.T) {
			out := run(t, helm, append([]string{"template", "keeper", chartDir}, c.args...)...)
			r := decodeRendered(t, out)
			checkContract(t, c, r, budget)
			if c.manifest == "" {
				return
			}
			want := manifestHeader(c) + string(out)
			got, err := os.ReadFile(filepath.Join(root, "configs/kubernetes", c.manifest))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Errorf("configs/kubernetes/%s is not the chart's output; run `make manifests`", c.manifest)
			}
		})
	}
}

// The chart refuses bad values with a message naming them.
func TestHelmChartRefusesBadValues(t *testing.T) {
	helm := tool(t, "HELM_BIN", "helm")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "mode=statefulset"}, "mode"},
		{[]string{"--set", "redis.layout=bullmq"}, "layout"},
		{[]string{"--set", "deckard.pollMin=10ms"}, "redis.layout=deckard"},
		{[]string{"--set", "redis.layout=deckard", "--set", "deckard.keyspaceEvents=maybe"}, "keyspaceEvents"},
		{[]string{"--set", "redis.layout=deckard", "--set", "deckard.pollMax=5"}, "pollMax"},
		{[]string{"--set", "redis.layout=deckard", "--set", "deckard.pollmin=5ms"}, "pollmin"},
		{[]string{"--set", "redis.adress=x"}, "adress"},
		{[]string{"--set", "redis.addr="}, "redis.addr"},
		{[]string{"--set", "etcd.endpoints=null"}, "endpoints"},
		{[]string{"--set", "etcd.tls.enabled=true"}, "etcd.tls.secretName"},
		{[]string{"--set", "mode=sidecar", "--set", "sidecar.containers=null"}, "sidecar.containers"},
		{[]string{"--set", "etcd.sessionTTL=3"}, "sessionTTL"},
		{[]string{"--set", "redis.sentinel.master=queues", "--set", "redis.sentinel.addrs={s:26379}"}, "exclusive"},
		{[]string{"--set", "redis.addr=", "--set", "redis.sentinel.master=queues"}, "redis.sentinel.addrs"},
		{[]string{"--set", "redis.addr=", "--set", "redis.sentinel.master=queues", "--set", "redis.sentinel.addrs={sentinel}"}, "addrs"},
		{[]string{"--set", "redis.sentinel.mastr=queues"}, "mastr"},
		{[]string{"--set", "redis.sentinel.addrs={s:26379}"}, "redis.sentinel.master"},
		{[]string{"--set", "redis.sentinel.password.secretName=spw"}, "redis.sentinel.master"},
	} {
		out, err := runErr(helm, append([]string{"template", "keeper", chartDir}, c.args...)...)
		if err == nil {
			t.Errorf("%v: rendered:\n%.300s", c.args, out)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error does not name %q: %v", c.args, c.want, err)
		}
	}
}

// manifestHeader is the comment that heads each file in configs/kubernetes/.
func manifestHeader(c renderCase) string {
	args := ""
	if len(c.args) > 0 {
		args = " " + strings.ReplaceAll(strings.Join(c.args, " "), chartDir, "configs/helm/keeper")
	}
	return "# Rendered from configs/helm/keeper by `make manifests`: helm template keeper configs/helm/keeper" + args +
		"\n# Do not edit; change the chart (a test keeps the two equal).\n"
}

// rendered is one `helm template` decoded.
type rendered struct {
	configMaps  []corev1.ConfigMap
	deployments []appsv1.Deployment
	daemonSets  []appsv1.DaemonSet
	pdbs        []policyv1.PodDisruptionBudget
}

// decodeRendered decodes each object into its API type, refusing unknown
// fields and duplicate keys, and any kind the chart should not render.
func decodeRendered(t *testing.T, out []byte) rendered {
	t.Helper()
	var r rendered
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var err error
		switch meta.APIVersion + " " + meta.Kind {
		case "v1 ConfigMap":
			err = appendStrict(&r.configMaps, doc)
		case "apps/v1 Deployment":
			err = appendStrict(&r.deployments, doc)
		case "apps/v1 DaemonSet":
			err = appendStrict(&r.daemonSets, doc)
		case "policy/v1 PodDisruptionBudget":
			err = appendStrict(&r.pdbs, doc)
		default:
			t.Fatalf("document %d: unexpected %s %s", i, meta.APIVersion, meta.Kind)
		}
		if err != nil {
			t.Fatalf("document %d (%s): %v\n%s", i, meta.Kind, err, doc)
		}
	}
	return r
}

// appendStrict decodes doc into a new T, refusing unknown fields and
// duplicate keys, and appends it.
func appendStrict[T any](list *[]T, doc string) error {
	var o T
	if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
		return err
	}
	*list = append(*list, o)
	return nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// checkContract holds one rendering to what keeper needs from Kubernetes.
func checkContract(t *testing.T, c renderCase, r rendered, budget time.Duration) {
	t.Helper()
	if len(r.configMaps) != 1 || len(r.deployments)+len(r.daemonSets) != 1 {
		t.Fatalf("want one ConfigMap and one workload, got %d ConfigMaps, %d Deployments, %d DaemonSets",
			len(r.configMaps), len(r.deployments), len(r.daemonSets))
	}
	var pod corev1.PodTemplateSpec
	var selector map[string]string
	switch c.kind {
	case "Deployment":
		if len(r.deployments) != 1 {
			t.Fatalf("want a Deployment")
		}
		pod, selector = r.deployments[0].Spec.Template, r.deployments[0].Spec.Selector.MatchLabels
		// Evictions take one keeper at a time.
		if len(r.pdbs) != 1 || r.pdbs[0].Spec.MaxUnavailable == nil || r.pdbs[0].Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("want a PodDisruptionBudget with maxUnavailable 1, got %+v", r.pdbs)
		} else if !sameLabels(r.pdbs[0].Spec.Selector.MatchLabels, selector) {
			t.Errorf("PodDisruptionBudget selects %v, the pods are %v", r.pdbs[0].Spec.Selector.MatchLabels, selector)
		}
	case "DaemonSet":
		if len(r.daemonSets) != 1 {
			t.Fatalf("want a DaemonSet")
		}
		pod, selector = r.daemonSets[0].Spec.Template, r.daemonSets[0].Spec.Selector.MatchLabels
		if len(r.pdbs) != 0 {
			t.Errorf("a PodDisruptionBudget over DaemonSet pods: the disruption controller cannot count them")
		}
	}
	for k, v := range selector {
		if pod.Labels[k] != v {
			t.Errorf("the selector %v does not select the pod template's labels %v", selector, pod.Labels)
		}
	}
	spec := pod.Spec
	var keeper *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "keeper" {
			keeper = &spec.Containers[i]
		}
	}
	if keeper == nil {
		t.Fatalf("no keeper container in %v", spec.Containers)
	}
	if c.name == "sidecar" && len(spec.Containers) != 2 {
		t.Errorf("sidecar mode: want the worker and keeper, got %d containers", len(spec.Containers))
	}

	// keeper.yaml comes from the ConfigMap, through --config.
	cm := r.configMaps[0]
	cfgText, ok := cm.Data["keeper.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no keeper.yaml", cm.Name)
	}
	if len(keeper.Args) != 3 || keeper.Args[0] != "run" || keeper.Args[1] != "--config" {
		t.Fatalf("keeper args %q, want run --config <file>", keeper.Args)
	}
	mounts := mountsOf(spec, keeper)
	if m, ok := mounts[path.Dir(keeper.Args[2])]; !ok || m.ConfigMap == nil || m.ConfigMap.Name != cm.Name || path.Base(keeper.Args[2]) != "keeper.yaml" {
		t.Errorf("--config %s is not keeper.yaml of ConfigMap %s mounted", keeper.Args[2], cm.Name)
	}
	var cfg map[string]any
	if err := yamlv3.Unmarshal([]byte(cfgText), &cfg); err != nil {
		t.Fatalf("keeper.yaml: %v", err)
	}

	// Probes on the port keeper serves health on.
	_, portText, err := net.SplitHostPort(fmt.Sprint(cfg["health_addr"]))
	if err != nil {
		t.Fatalf("health_addr %v: %v", cfg["health_addr"], err)
	}
	healthPort, _ := strconv.Atoi(portText)
	for name, p := range map[string]*corev1.Probe{"/healthz": keeper.LivenessProbe, "/readyz": keeper.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name {
			t.Errorf("want an HTTP probe on %s, got %+v", name, p)
			continue
		}
		port := p.HTTPGet.Port.IntValue()
		if p.HTTPGet.Port.StrVal != "" {
			port = namedPort(keeper, p.HTTPGet.Port.StrVal)
		}
		if port != healthPort {
			t.Errorf("probe %s on port %d, keeper serves health_addr %v", name, port, cfg["health_addr"])
		}
	}
	if keeper.LivenessProbe != nil && keeper.LivenessProbe.HTTPGet != nil && keeper.LivenessProbe.HTTPGet.Path == "/readyz" {
		t.Error("liveness on /readyz would restart a keeper that only waits for etcd or Redis")
	}

	// A grace period above keeper's shutdown budget.
	if g := spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= budget {
		t.Errorf("terminationGracePeriodSeconds (%s) is not above keeper's shutdown budget %s", fmtPtr(g), budget)
	}

	// The member id is the pod name; every $(VAR) refers to a variable
	// defined before it, as Kubernetes expands them.
	env := map[string]corev1.EnvVar{}
	for _, e := range keeper.Env {
		for _, ref := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(e.Value, -1) {
			if _, ok := env[ref[1]]; !ok {
				t.Errorf("env %s uses $(%s) before it is defined", e.Name, ref[1])
			}
		}
		env[e.Name] = e
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s comes from a Secret: secrets are mounted as files", e.Name)
		}
		if strings.Contains(strings.ToUpper(e.Name), "PASSWORD") {
			t.Errorf("env %s: a password in the environment", e.Name)
		}
	}
	if e := env["POD_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME is not the pod's name: %+v", e)
	}
	otlp := env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value
	if c.kind == "DaemonSet" {
		host := env["HOST_IP"]
		if !strings.Contains(otlp, "$(HOST_IP)") || host.ValueFrom == nil || host.ValueFrom.FieldRef == nil || host.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
			t.Errorf("a DaemonSet keeper exports to its node's collector: OTLP %q, HOST_IP %+v", otlp, host)
		}
	} else if !strings.HasPrefix(otlp, "http://") && !strings.HasPrefix(otlp, "https://") {
		t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT %q", otlp)
	}

	// Never a secret on argv.
	for _, a := range append(append([]string{}, keeper.Command...), keeper.Args...) {
		if strings.Contains(strings.ToLower(a), "password") || strings.Contains(a, "BEGIN") {
			t.Errorf("argv carries a secret: %q", a)
		}
	}
	// Every *_file keeper reads (redis.sentinel's too) is in a mounted
	// Secret that has that key.
	files := 0
	var walk func(section string, m map[string]any)
	walk = func(section string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(section+"."+k, sub)
				continue
			}
			if !strings.HasSuffix(k, "_file") {
				continue
			}
			files++
			file := fmt.Sprint(v)
			vol, ok := mounts[path.Dir(file)]
			if !ok || vol.Secret == nil {
				t.Errorf("%s.%s %s is not in a mounted Secret", section, k, file)
				continue
			}
			found := len(vol.Secret.Items) == 0
			for _, it := range vol.Secret.Items {
				found = found || it.Path == path.Base(file)
			}
			if !found {
				t.Errorf("%s.%s %s: Secret %s mounts no %s", section, k, file, vol.Secret.SecretName, path.Base(file))
			}
		}
	}
	for _, section := range []string{"etcd", "redis"} {
		m, _ := cfg[section].(map[string]any)
		walk(section, m)
	}
	// redis.addr or redis.sentinel, never both.
	if redis, _ := cfg["redis"].(map[string]any); (redis["addr"] != nil) == (redis["sentinel"] != nil) ||
		strings.Contains(c.name, "sentinel") != (redis["sentinel"] != nil) {
		t.Errorf("redis.addr %v, redis.sentinel %v", redis["addr"], redis["sentinel"])
	}
	if files != c.secretFiles {
		t.Errorf("keeper.yaml has %d *_file settings, want %d:\n%s", files, c.secretFiles, cfgText)
	}
	if redis, _ := cfg["redis"].(map[string]any); strings.Contains(c.name, "layout") != (redis["layout"] != nil) {
		t.Errorf("redis.layout rendered %v; only when set", redis["layout"])
	}
	// The deckard settings, under keeper's own names, only when set.
	wantDeckard := map[string]any(nil)
	if c.name == "deckard-layout" {
		wantDeckard = map[string]any{"keyspace_events": "off", "discovery_interval": "1h", "poll_min": "10ms", "poll_max": "1m"}
		// Unset, the prefix is the layout's own (deckard_v1), not keeper's.
		if redis, _ := cfg["redis"].(map[string]any); redis["prefix"] != nil {
			t.Errorf("redis.prefix rendered %v with the default values: keeper would not find Deckard's keys", redis["prefix"])
		}
	}
	if got, _ := cfg["deckard"].(map[string]any); fmt.Sprint(got) != fmt.Sprint(wantDeckard) {
		t.Errorf("deckard rendered %v, want %v", got, wantDeckard)
	}

	// Restricted: non-root, read-only root, no privilege, no capabilities.
	sc := keeper.SecurityContext
	psc := spec.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext on the keeper container")
	}
	nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot || psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	if !nonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("keeper may run as root: %+v", sc)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem writable")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("privilege escalation allowed")
	}
	if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities %+v, want drop ALL", sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp %+v", sc.SeccompProfile)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("a service account token is mounted; keeper does not use the Kubernetes API")
	}
	if keeper.Resources.Requests.Cpu().IsZero() || keeper.Resources.Requests.Memory().IsZero() || keeper.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v", keeper.Resources)
	}
}

// mountsOf maps each mount path of the container to its volume.
func mountsOf(spec corev1.PodSpec, c *corev1.Container) map[string]corev1.VolumeSource {
	vols := map[string]corev1.VolumeSource{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v.VolumeSource
	}
	out := map[string]corev1.VolumeSource{}
	for _, m := range c.VolumeMounts {
		if v, ok := vols[m.Name]; ok {
			out[m.MountPath] = v
		}
	}
	return out
}

func fmtPtr(p *int64) string {
	if p == nil {
		return "unset: 30s"
	}
	return strconv.FormatInt(*p, 10) + "s"
}

func namedPort(c *corev1.Container, name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	return -1
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// shutdownBudget is how long keeper gives itself to stop, from keeper's own
// defaults: the first duration setting of configs/keeper.yaml (kept equal to
// the built-in defaults by cmd/keeper's tests) whose key names a shutdown,
// else the bound daemon.shutdown sets in cmd/keeper/run.go.
func shutdownBudget(t *testing.T) time.Duration {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "configs/keeper.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yamlv3.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	var find func(m map[string]any, prefix string) (string, time.Duration, bool)
	find = func(m map[string]any, prefix string) (string, time.Duration, bool) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				if name, d, ok := find(sub, prefix+k+"."); ok {
					return name, d, true
				}
				continue
			}
			if strings.Contains(k, "shutdown") {
				if d, err := time.ParseDuration(fmt.Sprint(v)); err == nil {
					return prefix + k, d, true
				}
			}
		}
		return "", 0, false
	}
	if name, d, ok := find(cfg, ""); ok {
		t.Logf("keeper's shutdown budget: %s = %s (configs/keeper.yaml)", name, d)
		return d
	}
	src, err := os.ReadFile(filepath.Join(root, "cmd/keeper/run.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`func \(d \*daemon\) shutdown\(\) \{\s*ctx, cancel := context\.WithTimeout\(context\.Background\(\), (\d+) ?\* ?time\.Second\)`).FindSubmatch(src)
	if m == nil {
		t.Fatal("keeper's shutdown budget not found: neither a shutdown setting in configs/keeper.yaml nor the bound in daemon.shutdown")
	}
	secs, _ := strconv.Atoi(string(m[1]))
	t.Logf("keeper's shutdown budget: %ds (cmd/keeper/run.go daemon.shutdown; no setting in configs/keeper.yaml yet)", secs)
	return time.Duration(secs) * time.Second
}

// The HPA example decodes strictly into autoscaling/v2 and scales on the
// external metric its prometheus-adapter rule serves. (KEDA's ScaledObject
// has no API types here; its query is checked with the others by
// TestShippedQueriesParse and chaos's scrape test.)
func TestHPAExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "examples/hpa-external.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var hpas []autoscalingv2.HorizontalPodAutoscaler
	var cms []corev1.ConfigMap
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		switch meta.Kind {
		case "HorizontalPodAutoscaler":
			err = appendStrict(&hpas, doc)
		case "ConfigMap":
			err = appendStrict(&cms, doc)
		default:
			t.Fatalf("document %d: unexpected kind %q", i, meta.Kind)
		}
		if err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
	}
	if len(hpas) != 1 || len(cms) != 1 {
		t.Fatalf("want one HPA and one ConfigMap, got %d and %d", len(hpas), len(cms))
	}
	ms := hpas[0].Spec.Metrics
	if len(ms) != 1 || ms[0].External == nil {
		t.Fatalf("want one external metric: %+v", ms)
	}
	var adapter struct {
		ExternalRules []struct {
			Name struct {
				As string `json:"as"`
			} `json:"name"`
		} `json:"externalRules"`
	}
	if err := yaml.Unmarshal([]byte(cms[0].Data["config.yaml"]), &adapter); err != nil {
		t.Fatalf("adapter config: %v", err)
	}
	if len(adapter.ExternalRules) != 1 || adapter.ExternalRules[0].Name.As != ms[0].External.Metric.Name {
		t.Errorf("the HPA scales on %q, the adapter serves %+v", ms[0].External.Metric.Name, adapter.ExternalRules)
	}
}
