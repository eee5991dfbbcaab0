package netnstest

// The daemon as operators watch it: its metrics scraped by a real
// Prometheus server, /readyz and /healthz, `promtool check metrics` on
// what it exposes, and `udpmapsync status` with its exit statuses, on two
// daemons replicating a workload.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/control"
)

// metricsPort is where the daemons of [TestObservability] serve metrics,
// on their node's address.
const metricsPort = 9477

// TestObservability runs two daemons with --metrics-addr and a Prometheus
// server scraping both every second, and checks:
//
//   - node2's /readyz answers 503 until its initial sync, then 200, and
//     Prometheus saw udpmapsync_ready go from 0 to 1. Deterministically:
//     node2 (node id 2) hears node1 (node id 1, ready) announce, so it
//     neither decides alone nor is the lowest id, and must resync from
//     node1; until the test has seen the 503, a `status` exit of 1 and a
//     scraped 0, an nftables rule drops the unicast datagrams to node2,
//     the snapshot among them, so it cannot become ready;
//   - after a workload written on node1 has converged, Prometheus shows
//     node1's changes captured equal to node2's changes applied (plus
//     deletes of keys it lacked, plus what node1 coalesced before
//     sending), lag 0 and ready 1 on both, and map entries equal to the
//     workload's;
//   - `promtool check metrics` passes on both daemons' exposition, and
//     every udpmapsync metric deploy/prometheus/alerts.yml uses exists;
//   - `udpmapsync status` exits 2 with no daemon, 1 before node2 is ready,
//     0 once in sync; its table shows the peer and the maps, and
//     `status --json` decodes into control.Status.
func TestObservability(t *testing.T) {
	begin := time.Now()
	prometheus, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed: `make deps` installs it (Debian package prometheus)")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: `make deps` installs it (Debian package prometheus)")
	}
	requireNft(t)
	ctx := t.Context()

	// No array: a snapshot carries every slot of an array, which would
	// count as applied changes and blur captured = applied.
	maps := []MapSpec{
		{Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 65536},
		{Name: "odd", Type: ebpf.Hash, KeySize: 13, ValueSize: 37, MaxEntries: 65536},
		{Name: "lru", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 16, MaxEntries: 65536},
	}
	metricsArgs := func(i int, announce time.Duration) []string {
		return []string{"--node-id", strconv.Itoa(i + 1), "--announce-interval", announce.String(),
			"--metrics-addr", fmt.Sprintf("10.77.0.%d:%d", i+1, metricsPort)}
	}
	// node2 announces every 1.5 s: it trusts node1 as a resync source
	// only after hearing it for 3 s, by when the test has normally seen
	// what it waits for and lifted the rule, so no request is lost to it.
	c := startCluster(t, ClusterConfig{
		Nodes: 2, Maps: maps, Later: []int{node1, node2},
		Daemon:   DaemonConfig{StatsInterval: time.Second, ReadyTimeout: 40 * time.Second},
		NodeArgs: map[int][]string{node1: metricsArgs(node1, 500*time.Millisecond), node2: metricsArgs(node2, 1500*time.Millisecond)},
	})
	n1, n2 := c.Topology.Nodes[node1], c.Topology.Nodes[node2]
	instance := func(i int) string { return fmt.Sprintf("10.77.0.%d:%d", i+1, metricsPort) }

	// Prometheus first: it applies its targets up to 5 s after it starts
	// (its discovery reload interval), and node2 is to be scraped as soon
	// as it listens.
	prom := startPrometheus(t, prometheus, n1, []string{instance(node1), instance(node2)})
	if err := c.Start(node1); err != nil {
		t.Fatal(err)
	}
	t.Logf("node1 ready after %v", time.Since(begin).Round(time.Millisecond))
	prom.wait(t, `up{job="udpmapsync"}`, 15*time.Second, func(r []sample) bool { return len(r) == 2 })
	t.Logf("Prometheus scrapes both targets after %v", time.Since(begin).Round(time.Millisecond))

	// No daemon on a socket: exit status 2, and the message says which
	// socket and what to do.
	nowhere := filepath.Join(t.TempDir(), "none.sock")
	code, _, stderr := status(t, nowhere)
	if code != 2 || !strings.Contains(stderr, nowhere) || !strings.Contains(stderr, "--control-socket") || !strings.Contains(stderr, "running") {
		t.Errorf("status with no daemon: exit %d, stderr %q; want 2 naming the socket, --control-socket and whether it runs", code, stderr)
	}

	// node2 can hear node1's multicast but not its unicast answers.
	block, err := n2.addFilter(ctx, "inet", fmt.Sprintf(`
	chain input {
		type filter hook input priority 0; policy accept;
		iifname %q ip daddr %s udp dport %d drop
	}`, NodeIface, n2.Addr, Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { block.Remove(context.Background()) })
	started := make(chan error, 1)
	node2Start := time.Now()
	go func() { started <- c.Start(node2) }()
	t.Cleanup(func() {
		if started != nil {
			<-started // Start gives up by itself after ReadyTimeout
		}
	})

	// The first answer of node2's /readyz, as soon as it listens, is 503.
	http2 := nsClient(n2)
	readyz := "http://" + instance(node2) + "/readyz"
	first := 0
	for deadline := time.Now().Add(20 * time.Second); first == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node2's /readyz did not answer within 20s")
		}
		select {
		case err := <-started:
			started = nil
			t.Fatalf("node2 got ready or failed before its /readyz answered: %v", err)
		default:
		}
		if resp, err := http2.Get(readyz); err == nil {
			first = resp.StatusCode
			resp.Body.Close()
		}
	}
	if first != http.StatusServiceUnavailable {
		t.Fatalf("node2's /readyz answered %d before its initial sync, want 503", first)
	}
	if code := get(t, http2, "http://"+instance(node2)+"/healthz"); code != 200 {
		t.Errorf("node2's /healthz answered %d while running, want 200", code)
	}
	socket2 := filepath.Join(c.cfg.Dir, "node2.sock")
	code, out, stderr := status(t, socket2)
	if code != 1 || !strings.Contains(stderr, "not in sync") || !strings.Contains(stderr, "initial sync is not complete") ||
		strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("status before node2 is ready: exit %d, stderr %q; want 1 and one line saying why", code, stderr)
	}
	if !strings.Contains(out, "state: NOT IN SYNC") {
		t.Errorf("status table before ready:\n%s", out)
	}
	// Prometheus has scraped node2 not ready.
	prom.wait(t, fmt.Sprintf(`udpmapsync_ready{instance=%q} == 0`, instance(node2)), 15*time.Second, func(r []sample) bool { return len(r) == 1 })
	t.Logf("node2 seen not ready by /readyz, status and Prometheus %v after it started", time.Since(node2Start).Round(time.Millisecond))
	if err := block.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	lifted := time.Now()
	if err := <-started; err != nil {
		started = nil
		t.Fatal(err)
	}
	started = nil
	t.Logf("node2 ready %v after the rule was lifted", time.Since(lifted).Round(time.Millisecond))
	if code := get(t, http2, readyz); code != 200 {
		t.Errorf("node2's /readyz answered %d once ready, want 200", code)
	}

	// Replicated traffic.
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 800, DeleteRatio: 0.25, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w, 3000, 250)
	converge(t, c, w.Want())

	// What Prometheus sees once it has scraped the converged state.
	one := func(name string, i int) string { return fmt.Sprintf("%s{instance=%q}", name, instance(i)) }
	var captured, applied, missing, coalesced float64
	prom.waitAll(t, 20*time.Second, func(q func(string) []sample) error {
		value := func(name string, i int) (float64, error) {
			r := q(one(name, i))
			if len(r) != 1 {
				return 0, fmt.Errorf("%s on %s: %d series, want 1", name, c.Topology.Nodes[i].Name, len(r))
			}
			return r[0].value, nil
		}
		var errs [4]error
		captured, errs[0] = value("udpmapsync_changes_captured_total", node1)
		applied, errs[1] = value("udpmapsync_changes_applied_total", node2)
		missing, errs[2] = value("udpmapsync_deletes_missing_total", node2)
		coalesced, errs[3] = value("udpmapsync_changes_coalesced_total", node1)
		if err := errors.Join(errs[:]...); err != nil {
			return err
		}
		if captured == 0 || captured != applied+missing+coalesced {
			return fmt.Errorf("node1 captured %v, node2 applied %v + deleted missing %v, node1 coalesced %v", captured, applied, missing, coalesced)
		}
		for _, i := range []int{node1, node2} {
			if lag := q(one("udpmapsync_peer_lag_datagrams", i)); len(lag) != 1 || lag[0].value != 0 {
				return fmt.Errorf("%s peer lag %v, want one peer at 0", c.Topology.Nodes[i].Name, lag)
			}
			if r := q(one("udpmapsync_ready", i)); len(r) != 1 || r[0].value != 1 {
				return fmt.Errorf("%s ready %v, want 1", c.Topology.Nodes[i].Name, r)
			}
		}
		for _, m := range c.Maps {
			got := q(fmt.Sprintf(`udpmapsync_map_entries{instance=%q,map=%q}`, instance(node2), m.Name))
			if want := float64(len(w.Want()[m.Name])); len(got) != 1 || got[0].value != want {
				return fmt.Errorf("node2 map %s: entries %v, want %v", m.Name, got, want)
			}
		}
		return nil
	})
	t.Logf("Prometheus: node1 captured %v = node2 applied %v + deletes of missing keys %v + node1 coalesced %v; lag 0, ready 1 on both",
		captured, applied, missing, coalesced)
	if r := prom.query(t, `sum(udpmapsync_resyncs_needed_total) + sum(udpmapsync_ringbuf_overflows_total)`); len(r) == 1 && r[0].value != 0 {
		t.Logf("resyncs needed or ring overflows during the run: %v", r[0].value)
	}

	// The samples Prometheus holds of node2's readiness: 0, then 1, never
	// back.
	history := prom.samples(t, fmt.Sprintf(`udpmapsync_ready{instance=%q}[5m]`, instance(node2)))
	if len(history) < 2 || history[0] != 0 || history[len(history)-1] != 1 || !slices.IsSorted(history) {
		t.Errorf("node2's udpmapsync_ready samples %v, want 0s then 1s", history)
	} else {
		zeros := slices.Index(history, 1)
		t.Logf("Prometheus scraped node2 not ready %d times, then ready %d times", zeros, len(history)-zeros)
	}

	// promtool accepts both expositions as they are, and every metric the
	// alerts use is exposed.
	alerts, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	used := slices.Compact(slices.Sorted(slices.Values(regexp.MustCompile(`udpmapsync_[a-z_]+`).FindAllString(string(alerts), -1))))
	for _, i := range []int{node1, node2} {
		n := c.Topology.Nodes[i]
		exposition := fetch(t, nsClient(n), "http://"+instance(i)+"/metrics")
		cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(exposition)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics on %s's exposition: %v\n%s", n.Name, err, out)
		}
		for _, name := range used {
			if !bytes.Contains(exposition, []byte("\n# TYPE "+name+" ")) {
				t.Errorf("deploy/prometheus/alerts.yml uses %s, which %s does not expose", name, n.Name)
			}
		}
	}

	// status: in sync (exit 0) once the lag is gone, the table shows the
	// peer and the maps, and --json decodes into the control schema.
	var table string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if code, table, stderr = status(t, socket2); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status on node2 after convergence: exit %d, stderr %q; want 0\n%s", code, stderr, table)
		}
	}
	t.Logf("udpmapsync status on node2:\n%s", table)
	for _, want := range []string{"state: ready and in sync", "\nMAPS\n", "\nPEERS\n", "10.77.0.1:3870", "\nRESYNC\nnone in progress",
		"\nCAPTURE\nbackend", "\nTOTALS\n", "changes_applied"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q", want)
		}
	}
	for _, m := range c.Maps {
		if !regexp.MustCompile(`(?m)^` + m.Name + ` +\S+ +\d+ B +\d+ B +65536 +` + strconv.Itoa(len(w.Want()[m.Name])) + ` +-\n`).MatchString(table) {
			t.Errorf("status table has no row for map %s with %d entries", m.Name, len(w.Want()[m.Name]))
		}
	}
	code, js, stderr := status(t, socket2, "--json")
	var st control.Status
	if err := json.Unmarshal([]byte(js), &st); err != nil || code != 0 {
		t.Fatalf("status --json: exit %d, %v, stderr %q:\n%s", code, err, stderr, js)
	}
	if st.Version != control.Version || !st.Ready || st.Daemon.Node != 2 || len(st.Peers) != 1 || st.Peers[0].Node != 1 ||
		st.Peers[0].Addr != n1.Addr.String()+":"+strconv.Itoa(Port) || st.Peers[0].Lag != 0 || len(st.Maps) != len(c.Maps) ||
		st.Resync != nil || st.Totals["changes_applied"] != uint64(applied) || st.Totals["resyncs_received"] != 1 {
		t.Errorf("status --json: %+v", st)
	}
	t.Logf("whole test %v", time.Since(begin).Round(time.Millisecond))
}

// status runs `udpmapsync status --control-socket socket args...` and
// returns its exit status, stdout and stderr.
func status(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), daemon.path, append([]string{"status", "--control-socket", socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("udpmapsync status: %v", err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// nsClient is an HTTP client whose connections are made inside node n's
// network namespace.
func nsClient(n *Node) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := n.Do(func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
}

// get returns the status code of a GET of url.
func get(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// fetch returns the body of a GET of url, which must answer 200.
func fetch(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// promServer is a Prometheus server run by a test.
type promServer struct {
	base   string
	client *http.Client
}

// startPrometheus runs Prometheus in node n's namespace, scraping targets
// every second as job udpmapsync, with its storage in a temporary
// directory, and stops it when the test ends.
func startPrometheus(t *testing.T, bin string, n *Node, targets []string) *promServer {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: udpmapsync
    static_configs:
      - targets: [%s]
`, `"`+strings.Join(targets, `", "`)+`"`)
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// A free port in n's namespace.
	var port int
	if err := n.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	}); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "prometheus.log")
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := n.Command(context.Background(), bin, "--config.file="+configFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("prometheus log:\n%s", b)
		}
	})
	p := &promServer{base: fmt.Sprintf("http://127.0.0.1:%d", port), client: nsClient(n)}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := p.client.Get(p.base + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logFile)
			t.Fatalf("prometheus exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile)
			t.Fatalf("prometheus not ready after 20s\n%s", b)
		}
	}
}

// sample is one series of an instant query's answer.
type sample struct {
	metric map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.metric, s.value) }

// api runs a query through the HTTP API and decodes its data.
func (p *promServer) api(query string, data any) error {
	resp, err := p.client.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return fmt.Errorf("query %s: %w", query, err)
	}
	if answer.Status != "success" {
		return fmt.Errorf("query %s: %s", query, answer.Error)
	}
	return json.Unmarshal(answer.Data, data)
}

// query runs an instant query whose answer is a vector.
func (p *promServer) query(t *testing.T, query string) []sample {
	t.Helper()
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := p.api(query, &data); err != nil {
		t.Fatal(err)
	}
	if data.ResultType != "vector" {
		t.Fatalf("query %s: a %s, want a vector", query, data.ResultType)
	}
	var out []sample
	for _, r := range data.Result {
		v, err := strconv.ParseFloat(fmt.Sprint(r.Value[1]), 64)
		if err != nil {
			t.Fatalf("query %s: value %v", query, r.Value)
		}
		out = append(out, sample{r.Metric, v})
	}
	return out
}

// samples runs a range query of one series and returns its raw samples'
// values, oldest first.
func (p *promServer) samples(t *testing.T, query string) []float64 {
	t.Helper()
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Values [][2]any `json:"values"`
		} `json:"result"`
	}
	if err := p.api(query, &data); err != nil {
		t.Fatal(err)
	}
	if data.ResultType != "matrix" || len(data.Result) != 1 {
		t.Fatalf("query %s: %s of %d series, want a matrix of one", query, data.ResultType, len(data.Result))
	}
	var out []float64
	for _, v := range data.Result[0].Values {
		f, err := strconv.ParseFloat(fmt.Sprint(v[1]), 64)
		if err != nil {
			t.Fatalf("query %s: value %v", query, v)
		}
		out = append(out, f)
	}
	return out
}

// wait runs query until ok accepts its answer, failing t after timeout.
func (p *promServer) wait(t *testing.T, query string, timeout time.Duration, ok func([]sample) bool) {
	t.Helper()
	var last []sample
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		if last = p.query(t, query); ok(last) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus: %s answered %v after %v", query, last, timeout)
		}
	}
}

// waitAll runs check, which queries through q, until it returns nil,
// failing t with its last error after timeout.
func (p *promServer) waitAll(t *testing.T, timeout time.Duration, check func(q func(string) []sample) error) {
	t.Helper()
	q := func(query string) []sample { return p.query(t, query) }
	var err error
	for deadline := time.Now().Add(timeout); ; time.Sleep(250 * time.Millisecond) {
		if err = check(q); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus after %v: %v", timeout, err)
		}
	}
}
