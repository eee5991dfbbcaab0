package mapopt

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
)

// ctEntry is a Cilium-like conntrack value with a nested member, an
// anonymous union and a bpf_spin_lock, as a map's BTF describes it:
//
//	struct ct_entry {
//		__u64 packets;          // 0
//		__u64 bytes;            // 8
//		__u32 lifetime;         // 16
//		__u16 rev_nat_index;    // 20
//		__u8  flags;            // 22
//		__u8  pad;              // 23
//		struct { __u32 ifindex; __u8 mac[6]; __u8 pad[2]; } nh; // 24..35
//		union { __u32 a; __u32 b; };                            // 36
//		struct bpf_spin_lock lock;                              // 40
//		__u64 lts;              // 48
//	};
func ctEntry() btf.Type {
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	u64 := &btf.Int{Name: "__u64", Size: 8}
	mac := &btf.Array{Index: u32, Type: u8, Nelems: 6}
	nh := &btf.Struct{Size: 12, Members: []btf.Member{{Name: "ifindex", Type: u32}, {Name: "mac", Type: mac, Offset: 32}}}
	un := &btf.Union{Size: 4, Members: []btf.Member{{Name: "a", Type: u32}, {Name: "b", Type: u32}}}
	lock := &btf.Struct{Name: "bpf_spin_lock", Size: 4, Members: []btf.Member{{Name: "val", Type: u32}}}
	return &btf.Struct{Name: "ct_entry", Size: 56, Members: []btf.Member{
		{Name: "packets", Type: u64},
		{Name: "bytes", Type: u64, Offset: 64},
		{Name: "lifetime", Type: &btf.Typedef{Name: "lifetime_t", Type: u32}, Offset: 128},
		{Name: "rev_nat_index", Type: u16, Offset: 160},
		{Name: "flags", Type: u8, Offset: 176},
		{Name: "nh", Type: nh, Offset: 192},
		{Name: "", Type: un, Offset: 288},
		{Name: "lock", Type: lock, Offset: 320},
		{Name: "lts", Type: u64, Offset: 384},
	}}
}

func resolve(t *testing.T, spec string, scan time.Duration, l Layout) (Options, error) {
	t.Helper()
	sp, err := ParseSpec(spec)
	if err != nil {
		return Options{}, err
	}
	if sp.Map != "/sys/fs/bpf/ct" {
		t.Fatalf("map %q", sp.Map)
	}
	return Resolve(sp.Map, sp.Options, scan, l)
}

func TestResolveByBTF(t *testing.T) {
	l := Layout{ValueSize: 56, Value: ctEntry()}
	o, err := resolve(t, "/sys/fs/bpf/ct,scan=1s,clock=lifetime:mono-s,refresh=lifetime:30s,local=nh.ifindex,local=nh.mac,clock=lts:mono-ns,local=b", 0, l)
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Scan: time.Second, RefreshPeriod: 30 * time.Second,
		Refresh: []Field{{"lifetime", 16, 4}},
		Clocks:  []Clock{{Field{"lifetime", 16, 4}, MonoS}, {Field{"lts", 48, 8}, MonoNS}},
		Local:   []Field{{"nh.ifindex", 24, 4}, {"nh.mac", 28, 6}, {"b", 36, 4}},
		Lock:    &Field{"lock", 40, 4}}
	if o.String() != want.String() {
		t.Errorf("got  %s\nwant %s", o.String(), want.String())
	}
	if !strings.Contains(o.String(), "spin-lock[40:44]") || !strings.Contains(o.String(), "clock=lts:mono-ns[48:56]") {
		t.Errorf("status form %s lacks the byte ranges", o.String())
	}
}

func TestResolveByOffset(t *testing.T) {
	o, err := resolve(t, "/sys/fs/bpf/ct,clock=0x10:4:boot-s,local=24:4", 2*time.Second, Layout{ValueSize: 56})
	if err != nil {
		t.Fatal(err)
	}
	if o.Scan != 2*time.Second || o.Clocks[0].Field != (Field{"0x10:4", 16, 4}) || o.Clocks[0].Kind != BootS || o.Local[0].Offset != 24 {
		t.Errorf("got %+v", o)
	}
	if o.Lock != nil {
		t.Error("a lock without BTF")
	}
}

// Every refusal names the map and the option and wraps its sentinel.
func TestResolveRefusals(t *testing.T) {
	withBTF := Layout{ValueSize: 56, Value: ctEntry()}
	for _, c := range []struct {
		spec string
		l    Layout
		want error
	}{
		{"/sys/fs/bpf/ct,scan", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,speed=1s", withBTF, ErrUnknownOption},
		{"/sys/fs/bpf/ct,scan=fast", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,scan=1ms", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,scan=1s,scan=2s", withBTF, ErrRepeated},
		{"/sys/fs/bpf/ct,scan=1s,vanished=forget", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,local=lifetim", withBTF, ErrNoField},
		{"/sys/fs/bpf/ct,local=nh.port", withBTF, ErrNoField},
		{"/sys/fs/bpf/ct,local=lifetime", Layout{ValueSize: 56}, ErrNoBTF},
		{"/sys/fs/bpf/ct,local=60:4", withBTF, ErrOutOfRange},
		{"/sys/fs/bpf/ct,local=4:0", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,clock=rev_nat_index:mono-s", withBTF, ErrClockSize},
		{"/sys/fs/bpf/ct,clock=lifetime:jiffies", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,clock=lifetime:mono-s,local=16:2", withBTF, ErrOverlap},
		{"/sys/fs/bpf/ct,clock=lifetime:mono-s,clock=16:4:boot-s", withBTF, ErrOverlap},
		{"/sys/fs/bpf/ct,local=lock", withBTF, ErrOverlap},
		{"/sys/fs/bpf/ct,scan=1s,refresh=lifetime:30s,local=lifetime", withBTF, ErrOverlap},
		{"/sys/fs/bpf/ct,refresh=lifetime:30s", withBTF, ErrNeedsScan},
		{"/sys/fs/bpf/ct,vanished=delete", withBTF, ErrNeedsScan},
		{"/sys/fs/bpf/ct,scan=1s,refresh=lifetime:30s,refresh=packets:10s", withBTF, ErrBadValue},
		{"/sys/fs/bpf/ct,scan=1s,refresh=lifetime", withBTF, ErrBadValue},
	} {
		_, err := resolve(t, c.spec, 0, c.l)
		var e *Error
		if !errors.Is(err, c.want) || !errors.As(err, &e) || e.Map != "/sys/fs/bpf/ct" {
			t.Errorf("%s: got %v, want %v in an *Error naming the map", c.spec, err, c.want)
			continue
		}
		if c.want != ErrOverlap && e.Option == "" {
			t.Errorf("%s: %v names no option", c.spec, err)
		}
	}
}

func TestNoOptions(t *testing.T) {
	o, err := Resolve("m", nil, 0, Layout{ValueSize: 8})
	if err != nil || o.InPlace() || o.String() != "-" {
		t.Errorf("got %+v, %v", o, err)
	}
}

// The configuration file gives what --map gives, and refuses what it
// does not know.
func TestParseConfig(t *testing.T) {
	specs, err := ParseConfig([]byte(`
maps:
  - map: /sys/fs/bpf/ct
    scan: 1s
    clock: [lifetime:mono-s, lts:mono-ns]
    refresh: [lifetime:30s]
    local: [nh.ifindex]
    vanished: delete
  - map: name:counters
`))
	if err != nil {
		t.Fatal(err)
	}
	o, err := Resolve(specs[0].Map, specs[0].Options, 0, Layout{ValueSize: 56, Value: ctEntry()})
	if err != nil {
		t.Fatal(err)
	}
	cmd, _ := ParseSpec("/sys/fs/bpf/ct,scan=1s,vanished=delete,refresh=lifetime:30s,clock=lifetime:mono-s,clock=lts:mono-ns,local=nh.ifindex")
	want, _ := Resolve(cmd.Map, cmd.Options, 0, Layout{ValueSize: 56, Value: ctEntry()})
	if o.String() != want.String() || len(specs) != 2 || specs[1].Map != "name:counters" || len(specs[1].Options) != 0 {
		t.Errorf("got %v: %s, want %s", specs, o.String(), want.String())
	}
	for _, bad := range []string{"maps:\n  - map: x\n    scna: 1s\n", "maps:\n  - scan: 1s\n", "maps: [", "mpas: []\n"} {
		if _, err := ParseConfig([]byte(bad)); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: %v, want ErrConfig", bad, err)
		}
	}
}

// merge=sum: counters only, contributions that fit, a default scan.
func TestResolveSum(t *testing.T) {
	counters := Layout{ValueSize: 16, MaxEntries: 1 << 16}
	o, err := resolve(t, "/sys/fs/bpf/ct,merge=sum", 0, counters)
	if err != nil {
		t.Fatal(err)
	}
	if o.Merge != Sum || o.Origins != DefaultOrigins || o.Scan != DefaultCounterScan {
		t.Errorf("merge=sum: %s, want the default origins and scan", o.String())
	}
	if o, err = resolve(t, "/sys/fs/bpf/ct,merge=sum,origins=3,scan=50ms", 0, counters); err != nil || o.Origins != 3 || o.Scan != 50*time.Millisecond {
		t.Errorf("origins=3,scan=50ms: %s, %v", o.String(), err)
	}
	if o, err = resolve(t, "/sys/fs/bpf/ct", 0, counters); err != nil || o.Merge != LastWriterWins || o.Scan != 0 {
		t.Errorf("the default: %s, %v", o.String(), err)
	}
	for _, c := range []struct {
		spec   string
		l      Layout
		want   error
		advice string
	}{
		{"merge=sum", Layout{ValueSize: 12, MaxEntries: 16}, ErrCounterValue, "not a multiple of 8"},
		{"merge=sum", Layout{ValueSize: 56, Value: ctEntry(), MaxEntries: 16}, ErrCounterValue, "spin-lock"},
		{"merge=sum,local=0:8", counters, ErrCounterValue, "every word is a counter"},
		{"merge=sum", Layout{ValueSize: 8, MaxEntries: 1 << 24}, ErrCounterMemory, "lower origins="},
		{"merge=sum,origins=65", counters, ErrBadValue, "2 to 64"},
		{"origins=3", counters, ErrBadValue, "for merge=sum maps"},
		{"merge=max", counters, ErrBadValue, "lww"},
		{"merge=sum,merge=lww", counters, ErrRepeated, "once"},
		{"merge=sum,scan=1s,vanished=delete", counters, ErrBadValue, "leave vanished out"},
	} {
		_, err := resolve(t, "/sys/fs/bpf/ct,"+c.spec, 0, c.l)
		var oe *Error
		if !errors.Is(err, c.want) || !errors.As(err, &oe) || oe.Map != "/sys/fs/bpf/ct" || !strings.Contains(err.Error(), c.advice) {
			t.Errorf("%s: %v, want %v naming the map and saying %q", c.spec, err, c.want, c.advice)
		}
	}
}

// The estimate covers what BenchmarkCounterBytes (replication) measured,
// with the knowledge's 32 bytes per contribution on top.
func TestCounterBytesPerKey(t *testing.T) {
	for _, c := range []struct{ origins, measured int }{{3, 294}, {16, 941}} {
		if got := CounterBytesPerKey(1, c.origins); got < c.measured+32*c.origins {
			t.Errorf("1 word, %d origins: %d bytes, less than the %d measured and the knowledge's", c.origins, got, c.measured)
		}
	}
}
