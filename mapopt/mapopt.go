// Package mapopt parses and checks the per-map options of udpmapsync:
// scanning for in-place changes, and the fields of a value that are
// refreshed lazily, hold a node's monotonic clock, or stay on their node.
// It resolves each field, named by BTF member or given as OFFSET:SIZE,
// to a byte range of the value and refuses what cannot work, with
// sentinel errors that the command turns into advice. It knows nothing of
// the network or of the BPF syscall.
package mapopt

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf/btf"
)

// Errors of [ParseSpec] and [Resolve], wrapped in an [*Error].
var (
	ErrUnknownOption = errors.New("unknown option")
	ErrBadValue      = errors.New("bad value")
	ErrNoField       = errors.New("no such field")
	ErrNoBTF         = errors.New("the map has no BTF to find field names in")
	ErrOutOfRange    = errors.New("field outside the value")
	ErrOverlap       = errors.New("fields overlap")
	ErrClockSize     = errors.New("a clock field must be 4 or 8 bytes")
	ErrNeedsScan     = errors.New("the option needs scanning")
	ErrRepeated      = errors.New("option given twice")
	ErrCounterValue  = errors.New("merge=sum needs a value of 64-bit counters")
	ErrCounterMemory = errors.New("the map's counters cannot fit")
)

// Error is an error about one option of one map.
type Error struct {
	Map    string // the map as given: its spec, or its name
	Option string // the option as written, key=value
	Err    error  // wraps one of the sentinels
}

func (e *Error) Error() string {
	if e.Option == "" {
		return fmt.Sprintf("map %s: %v", e.Map, e.Err)
	}
	return fmt.Sprintf("map %s, option %s: %v", e.Map, e.Option, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Option is one key=value pair as written.
type Option struct{ Key, Value string }

func (o Option) String() string { return o.Key + "=" + o.Value }

// Spec is one map to replicate as given on the command line or in the
// configuration file: what names the map, and its options as written.
type Spec struct {
	Map     string
	Options []Option
}

// Option keys.
const (
	keyScan     = "scan"
	keyVanished = "vanished"
	keyRefresh  = "refresh"
	keyClock    = "clock"
	keyLocal    = "local"
	keyMerge    = "merge"
	keyOrigins  = "origins"
)

// Keys lists the option keys, for messages.
var Keys = []string{keyScan, keyVanished, keyRefresh, keyClock, keyLocal, keyMerge, keyOrigins}

// ParseSpec splits "MAP,key=value,..." into the map and its options.
// Only the form is checked here; [Resolve] checks the values.
func ParseSpec(s string) (Spec, error) {
	parts := strings.Split(s, ",")
	sp := Spec{Map: parts[0]}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" || v == "" {
			return sp, &Error{Map: sp.Map, Option: p, Err: fmt.Errorf("%w: want key=value (keys: %s)", ErrBadValue, strings.Join(Keys, ", "))}
		}
		sp.Options = append(sp.Options, Option{Key: k, Value: v})
	}
	return sp, nil
}

// Field is a byte range of a map's value.
type Field struct {
	Name   string // as given: a member path, or OFFSET:SIZE
	Offset int
	Size   int
}

func (f Field) end() int { return f.Offset + f.Size }

func (f Field) overlaps(g Field) bool { return f.Offset < g.end() && g.Offset < f.end() }

// ClockKind is the clock a field's timestamps are read from, and their
// unit.
type ClockKind uint8

// Clock kinds: CLOCK_MONOTONIC (bpf_ktime_get_ns, bpf_ktime_get_coarse_ns)
// and CLOCK_BOOTTIME (bpf_ktime_get_boot_ns), in nanoseconds or in whole
// seconds (bpf_ktime_get_ns()/1e9, as Cilium's bpf_mono_now gives).
const (
	MonoNS ClockKind = iota + 1
	MonoS
	BootNS
	BootS
)

var clockNames = map[ClockKind]string{MonoNS: "mono-ns", MonoS: "mono-s", BootNS: "boot-ns", BootS: "boot-s"}

func (k ClockKind) String() string {
	if s, ok := clockNames[k]; ok {
		return s
	}
	return "clock(" + strconv.Itoa(int(k)) + ")"
}

// Boot reports whether the kind counts from boot, suspend included.
func (k ClockKind) Boot() bool { return k == BootNS || k == BootS }

// Unit is the duration of one tick of the kind.
func (k ClockKind) Unit() time.Duration {
	if k == MonoS || k == BootS {
		return time.Second
	}
	return time.Nanosecond
}

// Clock is a field holding a timestamp of a node's own clock.
type Clock struct {
	Field
	Kind ClockKind
}

// Vanished is what a scan does about a key gone from the map without a
// delete the capture saw.
type Vanished uint8

const (
	// Keep leaves the key on the peers: the entry was evicted here, which
	// is this node's business (the default).
	Keep Vanished = iota
	// Delete deletes it on the peers too, as a write of this node.
	Delete
)

func (v Vanished) String() string {
	if v == Delete {
		return "delete"
	}
	return "keep"
}

// Merge is a map's merge rule: what a node's map holds of its peers'
// writes.
type Merge uint8

const (
	// LastWriterWins keeps, key by key, the write with the latest version
	// (the default).
	LastWriterWins Merge = iota
	// Sum holds, key by key, the cluster-wide total of every node's
	// counters: the value is a vector of 64-bit counters, and each node's
	// contribution is kept apart (package counter).
	Sum
)

func (m Merge) String() string {
	if m == Sum {
		return "sum"
	}
	return "lww"
}

// Counter limits and defaults of merge=sum maps.
const (
	// DefaultOrigins is how many nodes' contributions each key of a sum
	// map holds unless its origins option says otherwise.
	DefaultOrigins = 16
	// MaxOrigins is the most: the replication tracks at most 64 peers.
	MaxOrigins = 64
	// MaxCounterWords is the most 64-bit counters a value holds (the
	// kernel program's scratch space).
	MaxCounterWords = 64
	// MaxCounterMemory bounds what a sum map's contributions may take in
	// the daemon: [CounterKeys] times [CounterBytesPerKey].
	MaxCounterMemory = 1 << 30
	// DefaultCounterScan is a sum map's scan period when neither its
	// scan option nor --scan-interval gives one: its increments are found
	// only by scanning.
	DefaultCounterScan = 100 * time.Millisecond
)

// CounterBytesPerKey is the memory a key of a sum map costs the daemon,
// for words counters and origins contributions, as measured
// (BenchmarkCounterBytes in replication: 294 bytes a key of one counter
// with 3 origins, 941 with 16): the table of contributions (about 150
// bytes a key, and 42 and the words per contribution), and the
// knowledge's entry of each contribution (about 32 bytes).
func CounterBytesPerKey(words, origins int) int { return 150 + origins*(42+32+8*words) }

// CounterKeys is the most keys of a sum map of maxEntries entries the
// daemon keeps: those the map holds, and the resets of as many it no
// longer holds, each kept until --tombstone-horizon or, past as many,
// forgotten earlier (the oldest first).
func CounterKeys(maxEntries int) uint64 { return 2 * uint64(maxEntries) }

// Options are one map's options, resolved against its value layout.
type Options struct {
	// Merge is the map's merge rule; Origins, for Sum, how many nodes'
	// contributions each key holds.
	Merge   Merge
	Origins int
	// Scan is the period of the scans for in-place changes; 0: none.
	Scan time.Duration
	// Vanished is the rule for keys gone without a captured delete.
	Vanished Vanished
	// Refresh are the fields whose change alone is sent at most once per
	// RefreshPeriod per key.
	Refresh       []Field
	RefreshPeriod time.Duration
	// Clocks are sent relative to the sender's clock and rebased onto the
	// receiver's.
	Clocks []Clock
	// Local are never sent; the receiver keeps its own bytes there.
	Local []Field
	// Lock is the value's bpf_spin_lock, found in the map's BTF; nil if
	// none. Its bytes are never sent, and every lookup and update of the
	// map takes the lock (BPF_F_LOCK).
	Lock *Field
}

// InPlace reports whether the map needs anything beyond copying values.
func (o *Options) InPlace() bool {
	return o.Scan > 0 || len(o.Clocks) > 0 || len(o.Local) > 0 || o.Lock != nil
}

// String lists the options in the form of --map's, with each field's
// byte range: what `udpmapsync status` shows.
func (o *Options) String() string {
	var parts []string
	if o.Merge == Sum {
		parts = append(parts, keyMerge+"="+o.Merge.String(), keyOrigins+"="+strconv.Itoa(o.Origins))
	}
	if o.Scan > 0 {
		parts = append(parts, keyScan+"="+o.Scan.String(), keyVanished+"="+o.Vanished.String())
	}
	for _, f := range o.Refresh {
		parts = append(parts, fmt.Sprintf("%s=%s:%s%s", keyRefresh, f.Name, o.RefreshPeriod, f.span()))
	}
	for _, c := range o.Clocks {
		parts = append(parts, fmt.Sprintf("%s=%s:%s%s", keyClock, c.Name, c.Kind, c.span()))
	}
	for _, f := range o.Local {
		parts = append(parts, fmt.Sprintf("%s=%s%s", keyLocal, f.Name, f.span()))
	}
	if o.Lock != nil {
		parts = append(parts, "spin-lock"+o.Lock.span())
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func (f Field) span() string { return fmt.Sprintf("[%d:%d]", f.Offset, f.end()) }

// Layout is what a map's fields are resolved against.
type Layout struct {
	// ValueSize is the value's size in bytes.
	ValueSize int
	// Value is the value's BTF type; nil when the map carries none.
	Value btf.Type
	// MaxEntries is the map's, for the memory a sum map's counters take.
	MaxEntries int
}

// Resolve checks the options of the map named name (as given, for
// messages) against its value layout. scan is the default scan period
// (--scan-interval), which the map's own scan option overrides. Every
// error is an [*Error].
func Resolve(name string, opts []Option, scan time.Duration, l Layout) (Options, error) {
	o := Options{Scan: scan}
	fail := func(opt Option, err error) (Options, error) {
		return Options{}, &Error{Map: name, Option: opt.String(), Err: err}
	}
	o.Lock = findLock(l.Value)
	var seen []string
	var refresh, vanished, origins *Option
	for i, opt := range opts {
		if (opt.Key == keyScan || opt.Key == keyVanished || opt.Key == keyMerge || opt.Key == keyOrigins) && slices.Contains(seen, opt.Key) {
			return fail(opt, fmt.Errorf("%w: give %s once", ErrRepeated, opt.Key))
		}
		seen = append(seen, opt.Key)
		switch opt.Key {
		case keyScan:
			d, err := time.ParseDuration(opt.Value)
			if err != nil || d < 0 || d > 0 && d < MinScan {
				return fail(opt, fmt.Errorf("%w: want a duration of at least %s, such as 1s, or 0 for no scanning", ErrBadValue, MinScan))
			}
			o.Scan = d
		case keyVanished:
			switch opt.Value {
			case "keep":
				o.Vanished = Keep
			case "delete":
				o.Vanished = Delete
			default:
				return fail(opt, fmt.Errorf("%w: want keep or delete", ErrBadValue))
			}
			vanished = &opts[i]
		case keyRefresh:
			fname, period, ok := cutLast(opt.Value)
			d, err := time.ParseDuration(period)
			if !ok || err != nil || d <= 0 {
				return fail(opt, fmt.Errorf("%w: want FIELD:PERIOD, such as lifetime:30s", ErrBadValue))
			}
			if o.RefreshPeriod != 0 && d != o.RefreshPeriod {
				return fail(opt, fmt.Errorf("%w: every refresh field of a map has one period; this one has %s, an earlier one %s", ErrBadValue, d, o.RefreshPeriod))
			}
			f, err := resolveField(fname, l)
			if err != nil {
				return fail(opt, err)
			}
			o.Refresh, o.RefreshPeriod = append(o.Refresh, f), d
			refresh = &opts[i]
		case keyClock:
			fname, kind, ok := cutLast(opt.Value)
			k := kindByName(kind)
			if !ok || k == 0 {
				return fail(opt, fmt.Errorf("%w: want FIELD:KIND, KIND one of mono-ns, mono-s, boot-ns, boot-s", ErrBadValue))
			}
			f, err := resolveField(fname, l)
			if err != nil {
				return fail(opt, err)
			}
			if f.Size != 4 && f.Size != 8 {
				return fail(opt, fmt.Errorf("%w: %s is %d bytes", ErrClockSize, fname, f.Size))
			}
			o.Clocks = append(o.Clocks, Clock{Field: f, Kind: k})
		case keyLocal:
			f, err := resolveField(opt.Value, l)
			if err != nil {
				return fail(opt, err)
			}
			o.Local = append(o.Local, f)
		case keyMerge:
			switch opt.Value {
			case "lww":
				o.Merge = LastWriterWins
			case "sum":
				o.Merge = Sum
			default:
				return fail(opt, fmt.Errorf("%w: want lww (last writer wins, the default) or sum (counters)", ErrBadValue))
			}
		case keyOrigins:
			n, err := strconv.Atoi(opt.Value)
			if err != nil || n < 2 || n > MaxOrigins {
				return fail(opt, fmt.Errorf("%w: want the most nodes that count a key, 2 to %d", ErrBadValue, MaxOrigins))
			}
			o.Origins = n
			origins = &opts[i]
		default:
			return fail(opt, fmt.Errorf("%w %q: use %s", ErrUnknownOption, opt.Key, strings.Join(Keys, ", ")))
		}
	}
	if err := o.checkCounters(name, origins, l); err != nil {
		return Options{}, err
	}
	if o.Scan == 0 {
		for _, opt := range []*Option{refresh, vanished} {
			if opt != nil {
				return fail(*opt, fmt.Errorf("%w: only a scan finds in-place changes and vanished keys", ErrNeedsScan))
			}
		}
	}
	if err := o.checkOverlaps(); err != nil {
		return Options{}, &Error{Map: name, Err: err}
	}
	return o, nil
}

// checkCounters checks a sum map: a value of 64-bit counters and nothing
// else, and contributions of [CounterKeys] keys that fit in
// [MaxCounterMemory]. It gives the
// map its default origins and scan period.
func (o *Options) checkCounters(name string, origins *Option, l Layout) error {
	if o.Merge != Sum {
		if origins != nil {
			return &Error{Map: name, Option: origins.String(), Err: fmt.Errorf("%w: origins is for merge=sum maps", ErrBadValue)}
		}
		return nil
	}
	fail := func(err error) error { return &Error{Map: name, Option: keyMerge + "=sum", Err: err} }
	if l.ValueSize%8 != 0 || l.ValueSize == 0 || l.ValueSize/8 > MaxCounterWords {
		return fail(fmt.Errorf("%w: the value is %d bytes, not a multiple of 8 of at most %d (__u64 counters only)", ErrCounterValue, l.ValueSize, 8*MaxCounterWords))
	}
	if len(o.Clocks) > 0 || len(o.Local) > 0 || len(o.Refresh) > 0 || o.Lock != nil {
		return fail(fmt.Errorf("%w: a counter map's value has no clock, local, refresh or spin-lock fields: every word is a counter", ErrCounterValue))
	}
	if o.Vanished == Delete {
		return fail(fmt.Errorf("%w: a counter key that vanished is reset on every node whatever vanished says: leave vanished out", ErrBadValue))
	}
	if o.Origins == 0 {
		o.Origins = DefaultOrigins
	}
	per := CounterBytesPerKey(l.ValueSize/8, o.Origins)
	if total := CounterKeys(l.MaxEntries) * uint64(per); total > MaxCounterMemory {
		return fail(fmt.Errorf("%w: %d keys (max_entries held, and as many reset keys remembered) of %d bytes of contributions (%d origins) are %d MiB, more than %d MiB: lower origins= (the most nodes that count a key) or the map's max_entries",
			ErrCounterMemory, CounterKeys(l.MaxEntries), per, o.Origins, total>>20, MaxCounterMemory>>20))
	}
	if o.Scan == 0 {
		o.Scan = DefaultCounterScan
	}
	return nil
}

// MinScan is the shortest scan period: a scan reads the whole map.
const MinScan = 10 * time.Millisecond

// checkOverlaps refuses fields that cannot be what they say at once: a
// local field is never sent, so it can be neither a clock nor a refresh
// field; two clocks in one byte cannot both be rebased; and no field may
// cover the spin lock, which only the kernel writes.
func (o *Options) checkOverlaps() error {
	type named struct {
		what string
		f    Field
	}
	var all []named
	for _, f := range o.Local {
		all = append(all, named{"local", f})
	}
	for _, c := range o.Clocks {
		all = append(all, named{"clock", c.Field})
	}
	for _, f := range o.Refresh {
		all = append(all, named{"refresh", f})
	}
	if o.Lock != nil {
		all = append(all, named{"spin lock", *o.Lock})
	}
	for i, a := range all {
		for _, b := range all[:i] {
			if !a.f.overlaps(b.f) {
				continue
			}
			if a.what == "refresh" && b.what == "clock" || a.what == b.what && a.what == "refresh" {
				continue // a lifetime is typically both; two refresh fields share one rule
			}
			return fmt.Errorf("%w: %s field %s (bytes %d..%d) and %s field %s (bytes %d..%d)",
				ErrOverlap, a.what, a.f.Name, a.f.Offset, a.f.end()-1, b.what, b.f.Name, b.f.Offset, b.f.end()-1)
		}
	}
	return nil
}

// cutLast splits s at its last colon: OFFSET:SIZE fields hold one too.
func cutLast(s string) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func kindByName(s string) ClockKind {
	for k, n := range clockNames {
		if n == s {
			return k
		}
	}
	return 0
}

// resolveField finds the byte range a field names: OFFSET:SIZE, or a
// member of the value's BTF type, nested members joined by dots.
func resolveField(name string, l Layout) (Field, error) {
	f := Field{Name: name}
	if off, size, ok := strings.Cut(name, ":"); ok {
		o, err1 := strconv.ParseUint(off, 0, 16)
		s, err2 := strconv.ParseUint(size, 0, 16)
		if err1 != nil || err2 != nil || s == 0 {
			return f, fmt.Errorf("%w: field %q: want a member name or OFFSET:SIZE in bytes, such as 8:4", ErrBadValue, name)
		}
		f.Offset, f.Size = int(o), int(s)
	} else {
		if l.Value == nil {
			return f, fmt.Errorf("%w: name field %q as OFFSET:SIZE", ErrNoBTF, name)
		}
		var err error
		if f.Offset, f.Size, err = member(l.Value, name); err != nil {
			return f, err
		}
	}
	if f.end() > l.ValueSize {
		return f, fmt.Errorf("%w: field %s is bytes %d..%d of a %d-byte value", ErrOutOfRange, name, f.Offset, f.end()-1, l.ValueSize)
	}
	return f, nil
}

// member finds the byte offset and size of the member at a dotted path
// in t.
func member(t btf.Type, path string) (offset, size int, err error) {
	for _, name := range strings.Split(path, ".") {
		m, off, ok := findMember(t, name)
		if !ok {
			return 0, 0, fmt.Errorf("%w: %s has no member %q (%s)", ErrNoField, typeName(t), name, memberNames(t))
		}
		if m.BitfieldSize != 0 || off%8 != 0 {
			return 0, 0, fmt.Errorf("%w: %s is a bit field; give its bytes as OFFSET:SIZE", ErrBadValue, path)
		}
		offset += int(off / 8)
		t = m.Type
	}
	s, err := btf.Sizeof(t)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: size of %s: %v", ErrBadValue, path, err)
	}
	return offset, s, nil
}

// findMember finds the member name of struct or union t, looking into
// anonymous members too, and its offset in bits.
func findMember(t btf.Type, name string) (btf.Member, btf.Bits, bool) {
	for _, m := range members(t) {
		if m.Name == name {
			return m, m.Offset, true
		}
		if m.Name == "" {
			if in, off, ok := findMember(m.Type, name); ok {
				return in, m.Offset + off, true
			}
		}
	}
	return btf.Member{}, 0, false
}

func members(t btf.Type) []btf.Member {
	switch u := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		return u.Members
	case *btf.Union:
		return u.Members
	}
	return nil
}

func typeName(t btf.Type) string {
	if n := btf.UnderlyingType(t).TypeName(); n != "" {
		return "struct " + n
	}
	return "the value"
}

func memberNames(t btf.Type) string {
	var names []string
	for _, m := range members(t) {
		names = append(names, m.Name)
	}
	if len(names) == 0 {
		return "it has no members"
	}
	return "members: " + strings.Join(names, ", ")
}

// findLock finds a struct bpf_spin_lock among the members of t, nested
// ones included.
func findLock(t btf.Type) *Field {
	if t == nil {
		return nil
	}
	var found *Field
	var walk func(t btf.Type, base btf.Bits, path string)
	walk = func(t btf.Type, base btf.Bits, path string) {
		for _, m := range members(t) {
			p := strings.TrimPrefix(path+"."+m.Name, ".")
			if s, ok := btf.UnderlyingType(m.Type).(*btf.Struct); ok && s.Name == "bpf_spin_lock" {
				if found == nil {
					found = &Field{Name: p, Offset: int((base + m.Offset) / 8), Size: int(s.Size)}
				}
				continue
			}
			walk(m.Type, base+m.Offset, p)
		}
	}
	walk(t, 0, "")
	return found
}
