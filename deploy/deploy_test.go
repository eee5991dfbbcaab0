// Package deploy holds no code: its tests check the deployment files
// beside them against the real tools (promtool, systemd-analyze) and the
// Kubernetes API types, and against the daemon's own list of the
// capabilities it needs (../privileges/privileges.go). It is a module of its
// own so that the daemon's module does not pull in Kubernetes.
package deploy

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/udpmapsync/udpmapsync/privileges"
)

const (
	unitFile     = "systemd/udpmapsync.service"
	defaultsFile = "systemd/udpmapsync.default"
	// keyFile is where both deployments keep the key.
	keyFile        = "/etc/udpmapsync/key"
	daemonSetFile  = "kubernetes/daemonset.yaml"
	serviceFile    = "kubernetes/service.yaml"
	rulesFile      = "prometheus/alerts.yml"
	rulesTestFile  = "prometheus/alerts_test.yml"
	keepalivedFile = "keepalived/keepalived.conf"
	operations     = "../docs/OPERATIONS.md"
	// unitBinary is where the unit expects the daemon.
	unitBinary = "/usr/local/bin/udpmapsync"
)

// requireTool fails t, saying how to install it, when tool is not in PATH.
func requireTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is not installed: `make deps` installs it (Debian package %s)", tool, pkg)
	}
	return path
}

// run runs a command in dir and returns its combined output; a failure
// fails t with that output.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(a, b)
}

// TestKeepalivedConfig checks the keepalived configuration with
// keepalived's own config test (`keepalived -t`), once as shipped with the
// daemon's path pointed at an executable that exists here, and once with a
// path that does not: keepalived must then refuse the check, which shows
// that it read the vrrp_script. netns-test's TestFailoverKeepalived runs
// the same file on three nodes.
func TestKeepalivedConfig(t *testing.T) {
	requireTool(t, "keepalived", "keepalived")
	conf, err := os.ReadFile(keepalivedFile)
	if err != nil {
		t.Fatal(err)
	}
	def := regexp.MustCompile(`(?m)^\$UDPMAPSYNC=.*$`)
	if len(def.FindAll(conf, -1)) != 1 {
		t.Fatalf("%s does not define $UDPMAPSYNC once", keepalivedFile)
	}
	check := func(daemon string) (string, error) {
		path := filepath.Join(t.TempDir(), "keepalived.conf")
		if err := os.WriteFile(path, def.ReplaceAllLiteral(conf, []byte("$UDPMAPSYNC="+daemon)), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("keepalived", "-t", "-f", path).CombinedOutput()
		return string(out), err
	}
	if out, err := check("/bin/true"); err != nil {
		t.Errorf("keepalived -t: %v\n%s", err, out)
	}
	if out, err := check(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("keepalived -t accepts a check whose program is missing:\n%s", out)
	} else if !strings.Contains(out, "udpmapsync_in_sync") {
		t.Errorf("keepalived -t refuses, but not for the missing check: %v\n%s", err, out)
	}
}

// TestPrometheusRules checks the rule file and runs its unit test with
// promtool, and checks that the test makes every alert fire and that
// docs/OPERATIONS.md explains every alert.
func TestPrometheusRules(t *testing.T) {
	requireTool(t, "promtool", "prometheus")
	dir := filepath.Dir(rulesFile)
	t.Log(strings.TrimSpace(run(t, dir, "promtool", "check", "rules", filepath.Base(rulesFile))))
	t.Log(strings.TrimSpace(run(t, dir, "promtool", "test", "rules", filepath.Base(rulesTestFile))))

	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `json:"alert"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, rulesFile, &rules)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, rulesTestFile, &tests)
	fired := map[string]bool{}
	for _, g := range tests.Tests {
		for _, a := range g.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	docs, err := os.ReadFile(operations)
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fired[r.Alert] {
				t.Errorf("%s: no case fires %s", rulesTestFile, r.Alert)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: %s needs a severity, a summary and a description", rulesFile, r.Alert)
			}
			if !bytes.Contains(docs, []byte("`"+r.Alert+"`")) {
				t.Errorf("%s does not explain %s", operations, r.Alert)
			}
		}
	}
	if alerts == 0 {
		t.Fatalf("%s: no alerts", rulesFile)
	}
}

// readYAML decodes file into v.
func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	decodeFile(t, file, v, yaml.Unmarshal)
}

// readStrict decodes a manifest, refusing fields its type does not have.
func readStrict(t *testing.T, file string, v any) {
	t.Helper()
	decodeFile(t, file, v, yaml.UnmarshalStrict)
}

// decodeFile reads file and decodes it into v with decode.
func decodeFile(t *testing.T, file string, v any, decode func([]byte, any, ...yaml.JSONOpt) error) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := decode(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// unit is a systemd unit file: every value of every key, by section.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, text string) unit {
	t.Helper()
	u := unit{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", unitFile, i+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// one returns the single value of key in section.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Errorf("%s: [%s] %s= is set %d times, want once", unitFile, section, key, len(v))
		return ""
	}
	return v[0]
}

// buildDaemon builds the daemon into dir, unless $UDPMAPSYNC_BIN names
// one already built (as in netns-test). Other work in the same tree may
// not compile at the moment; then it builds the last commit, from a
// worktree removed again.
func buildDaemon(t *testing.T, dir string) string {
	t.Helper()
	if bin := os.Getenv("UDPMAPSYNC_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(dir, "udpmapsync")
	out, err := exec.Command("go", "-C", "..", "build", "-o", bin, "./cmd/udpmapsync").CombinedOutput()
	if err == nil {
		return bin
	}
	t.Logf("the working tree does not build (%v), building HEAD:\n%s", err, out)
	tree := filepath.Join(dir, "head")
	run(t, "..", "git", "worktree", "add", "--detach", tree, "HEAD")
	defer run(t, "..", "git", "worktree", "remove", "--force", tree)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/udpmapsync")
	cmd.Dir = tree
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the daemon builds neither in the working tree nor at HEAD (%v); set UDPMAPSYNC_BIN to a built one:\n%s", err, out)
	}
	return bin
}

// TestSystemdUnit verifies the unit with systemd-analyze, with ExecStart
// pointed at a daemon just built (verify checks that it exists), and
// checks that it grants exactly the capabilities the daemon needs.
func TestSystemdUnit(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	text, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, string(text))

	caps := privileges.Names()
	for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		if got := strings.Fields(u.one(t, "Service", key)); !sameSet(got, caps) {
			t.Errorf("%s: %s=%s; privileges/privileges.go requires %s", unitFile, key, strings.Join(got, " "), strings.Join(caps, " "))
		}
	}
	for key, want := range map[string]string{
		"Type":             "exec",
		"EnvironmentFile":  "-/etc/default/udpmapsync",
		"ExecStart":        unitBinary + " $UDPMAPSYNC_ARGS",
		"Restart":          "on-failure",
		"RuntimeDirectory": "udpmapsync",
		"StateDirectory":   "udpmapsync",
		"NoNewPrivileges":  "yes",
		"ProtectSystem":    "strict",
		"ReadWritePaths":   "/sys/fs/bpf",
		"ProtectHome":      "yes",
		"PrivateTmp":       "yes",
		"LimitMEMLOCK":     "infinity",
	} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s: %s=%s, want %s", unitFile, key, got, want)
		}
	}
	if u.one(t, "Service", "RestartSec") == "" {
		t.Errorf("%s: no RestartSec", unitFile)
	}
	if filter := strings.Fields(u.one(t, "Service", "SystemCallFilter")); !slices.Contains(filter, "bpf") {
		t.Errorf("%s: SystemCallFilter=%s does not allow bpf", unitFile, strings.Join(filter, " "))
	}
	for _, key := range []string{"After", "Wants"} {
		if !slices.Contains(u["Unit"][key], "network-online.target") {
			t.Errorf("%s: no %s=network-online.target", unitFile, key)
		}
	}

	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	// verify checks that ExecStart exists; everything else as shipped.
	old := "ExecStart=" + unitBinary + " "
	if n := strings.Count(string(text), "\n"+old); n != 1 {
		t.Fatalf("%s: %d lines start with %q, want 1", unitFile, n, old)
	}
	copied := filepath.Join(dir, filepath.Base(unitFile))
	if err := os.WriteFile(copied, []byte(strings.Replace(string(text), "\n"+old, "\nExecStart="+bin+" ", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", copied)
	out, err := cmd.CombinedOutput()
	// verify exits 0 on unknown keys and values it ignores, but says so.
	if err != nil || bytes.Contains(out, []byte(filepath.Base(unitFile))) {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", copied, err, out)
	}
	if len(out) > 0 {
		t.Logf("systemd-analyze verify, about other units:\n%s", out)
	}
}

// TestSystemdDefaults checks the example /etc/default/udpmapsync.
func TestSystemdDefaults(t *testing.T) {
	b, err := os.ReadFile(defaultsFile)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^UDPMAPSYNC_ARGS="([^"]*)"$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no UDPMAPSYNC_ARGS=\"...\" line", defaultsFile)
	}
	args := strings.Fields(string(m[1]))
	if !slices.Contains(args, "--iface") {
		t.Errorf("%s: UDPMAPSYNC_ARGS lacks --iface: %q", defaultsFile, m[1])
	}
	if i := slices.Index(args, "--key-file"); i < 0 || i+1 == len(args) || args[i+1] != keyFile {
		t.Errorf("%s: UDPMAPSYNC_ARGS lacks --key-file %s, whose making the file describes: %q", defaultsFile, keyFile, m[1])
	}
	if !bytes.Contains(b, []byte("head -c 32 /dev/urandom | base64 > "+keyFile)) {
		t.Errorf("%s: does not say how to make %s", defaultsFile, keyFile)
	}
	if i := slices.Index(args, "--metrics-addr"); i < 0 || i+1 == len(args) || metricsPort(t, args[i+1]) != 9477 {
		t.Errorf("%s: UDPMAPSYNC_ARGS does not listen for metrics on :9477 (what the alerts and the DaemonSet expect): %q", defaultsFile, m[1])
	}
}

// metricsPort is the port of a --metrics-addr value.
func metricsPort(t *testing.T, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("--metrics-addr %q: %v", addr, err)
	}
	return n
}

// TestDaemonSet decodes the DaemonSet strictly into the Kubernetes API
// type and checks what the daemon needs of it.
func TestDaemonSet(t *testing.T) {
	var ds appsv1.DaemonSet
	readStrict(t, daemonSetFile, &ds)
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Errorf("%s is a %s %s, want an apps/v1 DaemonSet", daemonSetFile, ds.APIVersion, ds.Kind)
	}
	spec := ds.Spec.Template.Spec
	if ds.Spec.Selector == nil {
		t.Fatal("no selector")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("the selector's %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork is not true: the daemon replicates over the node's interface")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want %s with hostNetwork", spec.DNSPolicy, corev1.DNSClusterFirstWithHostNet)
	}
	if s := ds.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 1", s)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == ""
	}) {
		t.Errorf("tolerations %+v: none tolerates every taint (operator Exists, no key or effect)", spec.Tolerations)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	// The metrics listener, the probes, the port and the scrape annotation
	// must agree.
	var addr string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--metrics-addr="); ok {
			addr = v
		}
	}
	if addr == "" {
		t.Fatalf("args %q: no --metrics-addr=", c.Args)
	}
	port := metricsPort(t, addr)
	if !slices.Contains(c.Args, "--iface=$(UDPMAPSYNC_IFACE)") ||
		!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "UDPMAPSYNC_IFACE" && e.Value != "" }) {
		t.Errorf("args %q, env %+v: want --iface=$(UDPMAPSYNC_IFACE) and that variable set", c.Args, c.Env)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s httpGet", p.name)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || g.Port.IntValue() != port {
			t.Errorf("%s gets %s on port %s; want %s on %d, where --metrics-addr=%s listens", p.name, g.Path, g.Port.String(), p.path, port, addr)
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == port && p.Name == "metrics" }) {
		t.Errorf("ports %+v: no port named metrics on %d", c.Ports, port)
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(port) {
		t.Errorf("annotations %v: want prometheus.io/scrape \"true\" and prometheus.io/port %q", ann, strconv.Itoa(port))
	}

	// The key: a Secret mounted where --key-file looks, readable by root
	// alone.
	if !slices.Contains(c.Args, "--key-file="+keyFile) {
		t.Errorf("args %q: no --key-file=%s", c.Args, keyFile)
	}
	var keyVol string
	for _, m := range c.VolumeMounts {
		if m.MountPath == filepath.Dir(keyFile) {
			keyVol = m.Name
		}
	}
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool {
		return v.Name == keyVol && v.Secret != nil && v.Secret.SecretName != "" &&
			v.Secret.DefaultMode != nil && *v.Secret.DefaultMode&0o077 == 0
	}) {
		t.Errorf("volumes %+v: no Secret of mode 0400 or 0600 mounted at %s", spec.Volumes, filepath.Dir(keyFile))
	}

	// Exactly the capabilities the daemon needs, nothing else.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	var want []string
	for _, name := range privileges.Names() {
		want = append(want, strings.TrimPrefix(name, "CAP_"))
	}
	var added []string
	for _, a := range sc.Capabilities.Add {
		added = append(added, string(a))
	}
	if !sameSet(added, want) {
		t.Errorf("capabilities add %v; privileges/privileges.go requires %v", added, want)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	privileged := sc.Privileged != nil && *sc.Privileged
	if privileged {
		t.Error("privileged: the capabilities above are all it needs")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}

	// The host paths it needs, mounted where the daemon looks.
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for _, w := range []struct {
		path     string
		typ      corev1.HostPathType
		readOnly bool
	}{
		{"/sys/fs/bpf", corev1.HostPathDirectoryOrCreate, false},
		{"/sys/kernel/btf", corev1.HostPathDirectory, true},
		{"/run/udpmapsync", corev1.HostPathDirectoryOrCreate, false},
		{"/var/lib/udpmapsync", corev1.HostPathDirectoryOrCreate, false},
	} {
		m, ok := mounts[w.path]
		if !ok {
			t.Errorf("nothing mounted at %s", w.path)
			continue
		}
		v := volumes[m.Name].HostPath
		switch {
		case v == nil:
			t.Errorf("%s: volume %q is not a hostPath", w.path, m.Name)
		case v.Path != w.path || v.Type == nil || *v.Type != w.typ:
			t.Errorf("%s: volume %q is hostPath %s, want %s type %s", w.path, m.Name, v.Path, w.path, w.typ)
		}
		if m.ReadOnly != w.readOnly {
			t.Errorf("%s: readOnly %v, want %v", w.path, m.ReadOnly, w.readOnly)
		}
	}
	// Pins made on the host after the pod started must show up in it;
	// Bidirectional is refused without privileged.
	if p := mounts["/sys/fs/bpf"].MountPropagation; p == nil || *p != corev1.MountPropagationHostToContainer && (*p != corev1.MountPropagationBidirectional || !privileged) {
		got := "unset"
		if p != nil {
			got = string(*p)
		}
		t.Errorf("/sys/fs/bpf: mountPropagation %s, want HostToContainer (Bidirectional only if privileged)", got)
	}

	// Sized as its comment says: requests and a limit, limit above requests.
	req, lim := c.Resources.Requests.Memory(), c.Resources.Limits.Memory()
	if req.IsZero() || lim.IsZero() || lim.Cmp(*req) < 0 {
		t.Errorf("memory requests %v, limits %v: want both, the limit at least the request", req, lim)
	}
	if min := resource.MustParse("64Mi"); req.Cmp(min) < 0 {
		t.Errorf("memory request %v is below the daemon's 64 MiB base", req)
	}
	if c.Resources.Requests.Cpu().IsZero() {
		t.Error("no cpu request")
	}
}

// The headless Service of the unicast mode lists the DaemonSet's pods,
// ready or not, on the sync port, and the DaemonSet names it as the
// value that switches UDPMAPSYNC_PEERS to discovery.
func TestUnicastService(t *testing.T) {
	var ds appsv1.DaemonSet
	readStrict(t, daemonSetFile, &ds)
	var svc corev1.Service
	readStrict(t, serviceFile, &svc)
	if svc.APIVersion != "v1" || svc.Kind != "Service" {
		t.Errorf("%s is a %s %s, want a v1 Service", serviceFile, svc.APIVersion, svc.Kind)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("clusterIP %q, want None: a headless Service resolves to every pod", svc.Spec.ClusterIP)
	}
	if !svc.Spec.PublishNotReadyAddresses {
		t.Error("publishNotReadyAddresses is not true: a daemon is ready only once it found its peers through this name")
	}
	if len(svc.Spec.Selector) == 0 {
		t.Fatal("no selector")
	}
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("the Service's selector %s=%s does not match the DaemonSet's pod labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if svc.Namespace != ds.Namespace {
		t.Errorf("Service in %q, DaemonSet in %q", svc.Namespace, ds.Namespace)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	var port int32
	var group string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--port="); ok {
			p, _ := strconv.Atoi(v)
			port = int32(p)
		}
		if v, ok := strings.CutPrefix(a, "--group="); ok {
			group = v
		}
	}
	if port == 0 {
		port = 3870 // the daemon's default
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != port || svc.Spec.Ports[0].Protocol != corev1.ProtocolUDP {
		t.Errorf("ports %+v, want UDP %d, the daemon's --port", svc.Spec.Ports, port)
	}
	if group == "" || !slices.Contains(c.Args, "--peers=$(UDPMAPSYNC_PEERS)") {
		t.Errorf("args %q: want --group and --peers=$(UDPMAPSYNC_PEERS)", c.Args)
	}
	var peers *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "UDPMAPSYNC_PEERS" {
			peers = &c.Env[i]
		}
	}
	if peers == nil || peers.Value != "" {
		t.Errorf("env %+v: want UDPMAPSYNC_PEERS, empty (multicast) by default", c.Env)
	}
	name := "dns:" + svc.Name + "." + svc.Namespace + ".svc.cluster.local"
	if b, err := os.ReadFile(daemonSetFile); err != nil || !bytes.Contains(b, []byte(name)) {
		t.Errorf("%s does not say to set UDPMAPSYNC_PEERS to %s (%v)", daemonSetFile, name, err)
	}
}
