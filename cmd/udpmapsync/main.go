// Command udpmapsync replicates BPF maps between the nodes of a link: it
// captures every change to the local maps in the kernel and sends it to the
// other nodes over UDP multicast (or unicast), and applies theirs.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/udpmapsync/udpmapsync/control"
	"github.com/udpmapsync/udpmapsync/discovery"
	"github.com/udpmapsync/udpmapsync/epoch"
	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/metrics"
	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// version is set at build time: go build -ldflags "-X main.version=...".
var version = "dev"

// Flags are the command line options.
type Flags struct {
	Iface            string
	Group            string
	Port             uint16
	Peers            []string
	PeersRefresh     time.Duration
	DNSServer        string
	Maps             []string
	Capture          string
	FlushInterval    time.Duration
	AnnounceInterval time.Duration
	MTU              int
	NodeID           uint32
	RingSize         byteSize
	ResendBuffer     byteSize
	ReassemblyMemory byteSize
	ApplyWorkers     int
	Repair           string
	KeyFile          string
	InsecureNoKey    bool
	StatsInterval    time.Duration
	LogLevel         string
	Version          bool
	ReadyFile        string
	MetricsAddr      string
	ControlSocket    string
	StateDir         string
	CPUProfile       string
	TombstoneHorizon time.Duration
	ClockOffset      time.Duration
	DigestInterval   time.Duration
	ScanInterval     time.Duration
	MonoOffset       time.Duration
	Config           string
}

// defaultStateDir holds the epoch file; the systemd unit's StateDirectory.
const defaultStateDir = "/var/lib/udpmapsync"

// register adds the options to fs with their defaults.
func (f *Flags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Iface, "iface", "", "interface to replicate over (required)")
	fs.StringVar(&f.Group, "group", "239.1.1.1", "multicast group, IPv4 or IPv6 (e.g. ff02::1:3)")
	fs.Uint16Var(&f.Port, "port", transport.DefaultPort, "UDP port to send to and listen on")
	fs.StringSliceVar(&f.Peers, "peers", nil, "unicast to these nodes instead of multicast: ip,ip,..., dns:NAME (every A or AAAA record, "+
		"e.g. a Kubernetes headless Service) or file:PATH (one address a line); without a key only they are accepted")
	fs.DurationVar(&f.PeersRefresh, "peers-refresh", discovery.DefaultRefresh, "how often --peers dns:NAME or file:PATH is looked up again")
	fs.StringVar(&f.DNSServer, "dns-server", "", "test hook: resolve --peers dns:NAME with this server (ADDR:PORT) instead of the system's")
	_ = fs.MarkHidden("dns-server")
	fs.StringArrayVar(&f.Maps, "map", nil, "map to replicate: a pinned path, name:NAME or id:N, then its options: SPEC,scan=1s,clock=FIELD:KIND,refresh=FIELD:PERIOD,local=FIELD,vanished=keep|delete,merge=lww|sum,origins=N (repeatable; default: every map pinned in "+loader.DefaultPinDir+")")
	fs.StringVar(&f.Config, "config", "", "YAML file listing maps with their options (maps: [{map: SPEC, scan: 1s, clock: [...], ...}]), in addition to --map")
	fs.DurationVar(&f.ScanInterval, "scan-interval", 0, "scan every map this often for in-place changes and evictions (0: never); a map's scan option overrides it")
	fs.StringVar(&f.Capture, "capture", string(loader.BackendAuto), "capture backend: auto, fentry or syscall")
	fs.DurationVar(&f.FlushInterval, "flush-interval", replication.DefaultFlushInterval, "longest a change waits to share a datagram")
	fs.DurationVar(&f.AnnounceInterval, "announce-interval", replication.DefaultAnnounceInterval, "period of announcements: map schemas and the latest sequence number, the heartbeat that reveals a lost tail")
	fs.IntVar(&f.MTU, "mtu", 0, "MTU to size datagrams for (0: the interface's)")
	fs.Uint32Var(&f.NodeID, "node-id", 0, "this node's id (0: derived from the interface's MAC address)")
	f.RingSize = loader.DefaultRingSize
	fs.Var(&f.RingSize, "ring-size", "capture ring buffer size, a power of two (e.g. 16MiB); what a burst may queue while the daemon catches up")
	f.ResendBuffer = replication.DefaultResendBytes
	fs.Var(&f.ResendBuffer, "resend-buffer", "the most bytes of sent datagrams kept to repair peers' losses (the last 0.75 s's, in steps of 8MiB); older losses need a resync")
	f.ReassemblyMemory = replication.DefaultReassemblyBytes
	fs.Var(&f.ReassemblyMemory, "reassembly-memory", "bytes held at most of records larger than a datagram whose fragments are still arriving, from all peers; one peer may hold a quarter")
	fs.IntVar(&f.ApplyWorkers, "apply-workers", 1, "goroutines that write peers' changes into the local maps, 1 or 2: two split each large batch by key "+
		"between two batch syscalls at once, for a receiver with a core to spare")
	fs.StringVar(&f.Repair, "repair", repairGroup, "how lost datagrams are asked for and resent with multicast: group (after a random back-off, "+
		"to the group, so one request and one resend serve every node that lost them) or unicast (each node asks and is answered apart); always unicast with --peers")
	fs.StringVar(&f.KeyFile, "key-file", "", "seal every datagram with the pre-shared key in this file (base64, one a line, a second for rotation; mode 0600); required unless --insecure-no-key")
	fs.BoolVar(&f.InsecureNoKey, "insecure-no-key", false, "run without a key: sync traffic neither authenticated nor encrypted, only for a link where every host is trusted")
	fs.DurationVar(&f.StatsInterval, "stats-interval", 5*time.Second, "period of the statistics log line (0: never)")
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.Version, "version", false, "print the version and exit")
	fs.StringVar(&f.ReadyFile, "ready-file", "", "write this file (with the pid) once the initial sync with the peers is complete")
	fs.StringVar(&f.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics (/metrics), /healthz and /readyz on this address (e.g. :9477); off when empty")
	fs.StringVar(&f.ControlSocket, "control-socket", control.DefaultSocket, "unix socket that \"udpmapsync status\" asks (root only); none when empty")
	fs.StringVar(&f.StateDir, "state-dir", defaultStateDir, "directory of the persisted boot epoch (file epoch) and of the entries' versions saved at a stop for the next start (file state)")
	fs.DurationVar(&f.TombstoneHorizon, "tombstone-horizon", replication.DefaultTombstoneHorizon,
		"how long deletes are remembered, so that a node back from a partition or restart within it learns of them")
	fs.DurationVar(&f.DigestInterval, "digest-interval", replication.DefaultDigestInterval,
		"period of digest rounds, which compare the maps with one peer bucket by bucket and repair what differs (0: none)")
	fs.DurationVar(&f.ClockOffset, "clock-offset", 0, "test hook: shift this node's clock for its stamps by this much (within ±"+hlc.MaxSkew.String()+" of its peers)")
	// Nodes on one kernel (the tests' namespaces) share its clocks; this
	// makes them read as hosts booted at different times do.
	fs.DurationVar(&f.MonoOffset, "mono-offset", 0, "test hook: shift the monotonic and boot clocks this node reads for clock fields")
	_ = fs.MarkHidden("mono-offset")
	fs.StringVar(&f.CPUProfile, "cpuprofile", "", "write a CPU profile of the running daemon to this file (for perf/PROFILE.md)")
	_ = fs.MarkHidden("cpuprofile")
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(statusCommand(os.Args[2:], os.Stdout, os.Stderr))
	}
	var flags Flags
	fs := pflag.NewFlagSet("udpmapsync", pflag.ContinueOnError)
	flags.register(fs)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: udpmapsync --iface IFACE [--map SPEC]... [options]\n"+
			"       udpmapsync status [--json] [--control-socket PATH]   (udpmapsync status --help)\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "udpmapsync: %v\n", err)
		os.Exit(2)
	}
	if flags.Version {
		fmt.Println(version)
		return
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "udpmapsync: unexpected argument %q; maps are given with --map\n", fs.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &flags); err != nil {
		fmt.Fprintf(os.Stderr, "udpmapsync: %v\n", err)
		os.Exit(1)
	}
}

// config is what run needs, resolved and checked from [Flags].
type config struct {
	iface    *net.Interface
	group    netip.Addr
	peers    []netip.Addr     // a static --peers; empty, not nil, with discover
	discover discovery.Source // --peers dns:NAME or file:PATH
	level    slog.Level
	node     uint32
	// group is where repair requests and resends go to reach every node,
	// for --repair group with multicast; zero otherwise.
	repairTo netip.AddrPort
}

// The values of --repair.
const (
	repairGroup   = "group"
	repairUnicast = "unicast"
)

// check validates the flags that need no privileges, so a typo is reported
// before anything is opened. The capture backend and ring size are checked
// by [loader.NewCapture].
func (f *Flags) check() (*config, error) {
	var c config
	if f.Iface == "" {
		return nil, errors.New("--iface is required: the interface to replicate over (see ip link)")
	}
	var err error
	if c.iface, err = net.InterfaceByName(f.Iface); err != nil {
		return nil, fmt.Errorf("--iface %s: no such interface; see ip link", f.Iface)
	}
	if c.group, err = netip.ParseAddr(f.Group); err != nil || !c.group.IsMulticast() {
		return nil, fmt.Errorf("--group %s: not a multicast address (e.g. 239.1.1.1 or ff02::1:3)", f.Group)
	}
	if err := f.peersConfig(&c); err != nil {
		return nil, err
	}
	if f.FlushInterval <= 0 || f.AnnounceInterval <= 0 || f.StatsInterval < 0 {
		return nil, errors.New("--flush-interval and --announce-interval must be positive, --stats-interval not negative")
	}
	if f.TombstoneHorizon < time.Second {
		return nil, fmt.Errorf("--tombstone-horizon %s: must be at least 1s; deletes are forgotten after it, so make it longer "+
			"than the longest partition or restart whose deletes must still reach the other side", f.TombstoneHorizon)
	}
	if f.DigestInterval != 0 && f.DigestInterval < time.Second {
		return nil, fmt.Errorf("--digest-interval %s: each round reads every map; use at least 1s (default %s), or 0 to turn digest rounds off",
			f.DigestInterval, replication.DefaultDigestInterval)
	}
	if f.ClockOffset < -hlc.MaxSkew || f.ClockOffset > hlc.MaxSkew {
		return nil, fmt.Errorf("--clock-offset %s: peers drop stamps more than %s ahead of their clocks; stay within ±%s",
			f.ClockOffset, hlc.MaxSkew, hlc.MaxSkew)
	}
	if f.ScanInterval < 0 || f.ScanInterval > 0 && f.ScanInterval < mapopt.MinScan {
		return nil, fmt.Errorf("--scan-interval %s: must be 0 (no scanning) or a period of at least %s, such as 1s: each scan reads every map whole",
			f.ScanInterval, mapopt.MinScan)
	}
	if f.MTU < 0 {
		return nil, fmt.Errorf("--mtu %d: must be positive, or 0 for the interface's MTU", f.MTU)
	}
	if f.ReassemblyMemory < replication.MinReassemblyBytes || f.ReassemblyMemory > 1<<40 {
		return nil, fmt.Errorf("--reassembly-memory %s: use 1MiB to 1TiB (default %s); a peer may hold a quarter of it in records larger than a datagram whose fragments are still arriving",
			f.ReassemblyMemory, byteSize(replication.DefaultReassemblyBytes))
	}
	if f.ApplyWorkers < 1 || f.ApplyWorkers > 2 {
		return nil, fmt.Errorf("--apply-workers %d: use 1, or 2 on a receiver with a core to spare", f.ApplyWorkers)
	}
	switch f.Repair {
	case repairGroup:
		if c.peers == nil {
			c.repairTo = netip.AddrPortFrom(c.group, f.Port)
		}
	case repairUnicast:
	default:
		return nil, fmt.Errorf("--repair %s: use group (the default) or unicast", f.Repair)
	}
	if err := c.level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %s: use debug, info, warn or error", f.LogLevel)
	}
	if err := f.checkKey(); err != nil {
		return nil, err
	}
	if f.StateDir == "" {
		return nil, fmt.Errorf("--state-dir must name a directory (default %s): it keeps the boot epoch across restarts", defaultStateDir)
	}
	if c.node = f.NodeID; c.node == 0 {
		if c.node, err = nodeID(c.iface); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// keyAdvice is how to make a key, in one command an operator can paste.
const keyAdvice = "make one with\n" +
	"    install -d -m 0700 /etc/udpmapsync && (umask 077; head -c 32 /dev/urandom | base64 > /etc/udpmapsync/key)\n" +
	"copy the same file to every node and start each with --key-file /etc/udpmapsync/key (docs/SECURITY.md, \"Setting up a key\")"

// checkKey refuses to run without a key unless the operator said the link
// is trusted: sync traffic decides what every node's firewall or NAT lets
// through. Earlier versions ran without a key and only warned, so the
// message says what changed.
func (f *Flags) checkKey() error {
	switch {
	case f.KeyFile != "" && f.InsecureNoKey:
		return errors.New("--key-file and --insecure-no-key exclude each other: give one")
	case f.KeyFile == "" && !f.InsecureNoKey:
		return errors.New("no --key-file: udpmapsync seals its traffic with a pre-shared key by default " +
			"(since this version; earlier ones ran unauthenticated with a warning); " + keyAdvice + "; " +
			"or, only on a link where every host is trusted, run with --insecure-no-key: then anyone on the link " +
			"can read the replicated state and inject changes into every node")
	}
	return nil
}

// nodeID derives a node id from the interface's MAC address, so it stays
// the same across restarts.
func nodeID(iface *net.Interface) (uint32, error) {
	if len(iface.HardwareAddr) == 0 {
		return 0, fmt.Errorf("--iface %s has no MAC address to derive a node id from; set --node-id", iface.Name)
	}
	h := fnv.New32a()
	h.Write(iface.HardwareAddr)
	return max(h.Sum32(), 1), nil // 0 means "derive"
}

func run(ctx context.Context, f *Flags) error {
	c, err := f.check()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.level}))
	if err := checkCapabilities(); err != nil {
		return err
	}
	// The control socket and the metrics port first: a second daemon on
	// them stops here, before it attaches anything.
	svc, err := listen(f, log)
	if err != nil {
		return err
	}
	defer svc.stop() // if open fails; supervise stops them before the maps close
	d, err := open(f, c, log)
	if err != nil {
		return err
	}
	defer d.close()
	logStartup(log, c, f, d)
	if !d.sealed {
		log.Warn("--insecure-no-key: sync traffic is neither authenticated nor encrypted; anyone on this link can read the maps' state "+
			"and inject changes into every node, so the link must be trusted", "iface", c.iface.Name)
	}
	if f.CPUProfile != "" {
		stopProfile, err := startCPUProfile(f.CPUProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	return supervise(ctx, log, f, d, svc)
}

// open opens the maps, the socket and the capture, takes a new boot epoch
// and makes the node; the daemon's close releases them.
func open(f *Flags, c *config, log *slog.Logger) (_ *daemon, err error) {
	d := &daemon{cfg: c, flags: f, started: time.Now(), log: log}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	paths, specs, err := mapSpecs(f.Maps, f.Config)
	if err != nil {
		return nil, err
	}
	if d.maps, err = loader.OpenMaps(paths); err != nil {
		return nil, advice(err)
	}
	if d.options, err = resolveOptions(d.maps, specs, f.ScanInterval); err != nil {
		return nil, err
	}
	d.tr, err = transport.ListenUDP(transport.Config{Iface: c.iface, Group: c.group, Peers: c.peers,
		Unicast: c.discover != nil, Port: f.Port, MTU: f.MTU})
	if err != nil {
		return nil, fmt.Errorf("--iface %s: %w", c.iface.Name, err)
	}
	keys, payload, err := sealing(f.KeyFile, d.tr.Payload())
	if err != nil {
		return nil, err
	}
	d.sealed = keys != nil
	_, err = os.Stat(filepath.Join(f.StateDir, "epoch"))
	ranBefore := err == nil
	local := make([]replication.Map, len(d.maps))
	var captured []*loader.Map // all but the sum maps, which only scans follow
	for i, m := range d.maps {
		if d.options[i].Merge == mapopt.Sum {
			cm, err := openCounters(m, d.options[i], c.node, f.StateDir, ranBefore, f.TombstoneHorizon, log)
			if err != nil {
				return nil, err
			}
			d.counters = append(d.counters, cm)
			local[i] = replication.CounterMap(replication.MapFromLoader(m), cm.target, d.options[i])
			continue
		}
		local[i] = replication.MapFromLoader(m)
		local[i].Options = d.options[i]
		captured = append(captured, m)
	}
	table, err := replication.NewTable(local, payload)
	if errors.Is(err, replication.ErrRecordTooLarge) {
		return nil, fmt.Errorf("--iface %s (MTU %d): %w (the interface's, and --mtu if set)", c.iface.Name, cmp.Or(f.MTU, c.iface.MTU), err)
	} else if err != nil {
		return nil, fmt.Errorf("--iface %s (MTU %d): %w", c.iface.Name, cmp.Or(f.MTU, c.iface.MTU), err)
	}
	var source replication.Source = newIdleSource()
	if len(captured) > 0 {
		d.capture, err = loader.NewCapture(loader.CaptureOptions{Backend: loader.Backend(f.Capture), Maps: captured, RingSize: int(f.RingSize)})
		if err != nil {
			return nil, advice(err)
		}
		source = d.capture
	}
	if d.epoch, err = epoch.Next(filepath.Join(f.StateDir, "epoch"), time.Now()); err != nil {
		return nil, fmt.Errorf("--state-dir %s: %w", f.StateDir, err)
	}
	d.node, err = replication.NewNode(replication.Config{Node: c.node, Epoch: d.epoch, Table: table, Source: source,
		Transport: d.tr, Peers: c.peers, Group: c.repairTo, FlushInterval: f.FlushInterval, AnnounceInterval: f.AnnounceInterval,
		ResendBytes: int(f.ResendBuffer), ReassemblyBytes: int(f.ReassemblyMemory), ApplyWorkers: f.ApplyWorkers, Keys: keys, TombstoneHorizon: f.TombstoneHorizon,
		StateFile: filepath.Join(f.StateDir, "state"), Clock: hlc.New(nil, f.ClockOffset), MonoOffset: f.MonoOffset,
		DigestInterval: f.DigestInterval, Log: log})
	if errors.Is(err, replication.ErrResendSize) {
		return nil, fmt.Errorf("--resend-buffer %s: %w", f.ResendBuffer, err)
	} else if errors.Is(err, replication.ErrReassemblySize) {
		return nil, fmt.Errorf("--reassembly-memory %s: %w; raise it, or the MTU so that fewer records travel in fragments", f.ReassemblyMemory, err)
	} else if errors.Is(err, replication.ErrDigestPayload) {
		return nil, fmt.Errorf("--digest-interval %s: %w; raise --mtu (a digest needs %d bytes of payload) or set --digest-interval 0",
			f.DigestInterval, err, wire.HeaderSize+wire.DigestSize)
	} else if err != nil {
		return nil, err
	}
	d.watch = d.watchPeers(log)
	d.entries = metrics.NewEntryCounter(metrics.LoaderMaps(d.maps), metrics.DefaultEntriesTTL)
	return d, nil
}

// supervise runs the node until ctx is done or it fails, writing the
// ready file once it is ready and the stats line every --stats-interval.
// The node closes the capture and the socket to end their blocking reads;
// detaching fentry hooks waits for RCU grace periods, so stopping can take
// a second or more.
func supervise(ctx context.Context, log *slog.Logger, f *Flags, d *daemon, svc *services) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	node := d.node
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	go d.runWatcher(ctx)
	failed := svc.serve(ctx, d, log)
	defer svc.stop() // no scrape or status request reads the maps once they are closed
	var tick <-chan time.Time
	if f.StatsInterval > 0 {
		t := time.NewTicker(f.StatsInterval)
		defer t.Stop()
		tick = t.C
	}
	ready := node.Ready()
	for {
		select {
		case <-ctx.Done():
			stopping := time.Now()
			err := <-done
			logStats(context.Background(), log, d)
			log.Info("detached and stopped", "took", time.Since(stopping).Round(time.Millisecond))
			return err
		case err := <-done:
			return err // nil only once ctx is done
		case err := <-failed:
			cancel()
			<-done
			return err
		case <-ready:
			ready = nil
			if f.ReadyFile != "" {
				if err := os.WriteFile(f.ReadyFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
					cancel()
					<-done
					return fmt.Errorf("--ready-file: %w", err)
				}
			}
		case <-tick:
			logStats(ctx, log, d)
		}
	}
}

// sealing loads the keys of --key-file, if one is given, and returns the
// datagram payload left once the seal has its room.
func sealing(path string, payload int) (*seal.Keys, int, error) {
	if path == "" {
		return nil, payload, nil
	}
	keys, err := seal.LoadKeyFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("--key-file: %w", err)
	}
	return keys, payload - wire.SealSize, nil
}

// startCPUProfile profiles the daemon into path until the returned function
// is called: the setup is left out, so the profile shows the replication.
func startCPUProfile(path string) (func(), error) {
	out, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, fmt.Errorf("--cpuprofile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		out.Close()
	}, nil
}

// logStartup says what is replicated, how changes are captured and where
// they go.
func logStartup(log *slog.Logger, c *config, f *Flags, d *daemon) {
	capture := d.capture
	for i, m := range d.maps {
		args := []any{"name", m.Name, "type", m.Type, "key_size", m.KeySize,
			"value_size", m.ValueSize, "max_entries", m.MaxEntries, "id", m.ID, "options", d.options[i].String()}
		if m.CPUs > 0 { // peers need as many
			args = append(args, "possible_cpus", m.CPUs)
		}
		log.Info("replicating map", args...)
	}
	if capture == nil {
		log.Info("no capture attached", "backend", d.backend())
	} else if log.Info("capture attached", "backend", capture.Backend()); !capture.SeesProgramWrites() {
		args := []any{"backend", capture.Backend()}
		if why := capture.Fallback(); why != nil {
			args = append(args, "fentry_unavailable", why)
		}
		log.Warn("this capture backend sees only writes made from user space; writes by BPF programs are not replicated", args...)
	}
	dest := []any{"group", c.group}
	if c.discover != nil {
		dest = []any{"peers", c.discover.String(), "found", d.peerList()}
	} else if len(c.peers) > 0 {
		dest = []any{"peers", c.peers}
	}
	log.Info("listening", append(dest, "iface", c.iface.Name, "port", f.Port, "payload", d.tr.Payload(),
		"node", c.node, "epoch", d.epoch, "version", version)...)
}

// logStats writes the one-line summary, and a line per peer at debug level:
// the counters the metrics and the status command read.
func logStats(ctx context.Context, log *slog.Logger, d *daemon) {
	st := d.Status()
	peers := st.Peers
	attrs := append(d.Stats().Attrs(), slog.Bool("ready", st.Ready), slog.Int("peers", len(peers)))
	if d.watch != nil {
		attrs = append(attrs, d.watch.Stats().Attrs()...)
	}
	var full, future, dropped, atRisk uint64
	for _, cm := range d.counters {
		full += cm.target.OriginsFull.Load()
		future += cm.target.FutureStamps.Load()
		dropped += cm.target.ResetsDropped.Load()
		atRisk += cm.adder.AddsAtRisk.Load()
	}
	if len(d.counters) > 0 {
		attrs = append(attrs, slog.Uint64("counter_origins_full", full), slog.Uint64("counter_future_stamps", future),
			slog.Uint64("counter_resets_dropped", dropped), slog.Uint64("counter_adds_at_risk", atRisk))
	}
	log.LogAttrs(ctx, slog.LevelInfo, "stats", attrs...)
	for _, p := range peers {
		log.LogAttrs(ctx, slog.LevelDebug, "peer", slog.Any("node", p.Node), slog.Any("addr", p.Addr),
			slog.Any("epoch", p.Epoch), slog.Any("seq", p.Seq),
			slog.Duration("silent", time.Since(p.LastHeard).Round(time.Millisecond)),
			slog.Any("datagrams", p.Datagrams), slog.Any("gaps", p.Gaps))
	}
}

// byteSize is a flag value in bytes that accepts binary suffixes: 16MiB,
// 16M, 512KiB, 4096.
type byteSize int

var sizeSuffixes = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"G", 30}, {"M", 20}, {"K", 10}}

func (b *byteSize) Set(s string) error {
	shift := uint(0)
	num := s
	for _, u := range sizeSuffixes {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 32)
	if err != nil || n<<shift > 1<<31 {
		return fmt.Errorf("%q: want a size such as 16MiB, 512KiB or 4096", s)
	}
	*b = byteSize(n << shift)
	return nil
}

func (b byteSize) String() string {
	for _, u := range sizeSuffixes[:3] {
		if b != 0 && int(b)%(1<<u.shift) == 0 {
			return strconv.Itoa(int(b)>>u.shift) + u.suffix
		}
	}
	return strconv.Itoa(int(b))
}

func (*byteSize) Type() string { return "size" }
