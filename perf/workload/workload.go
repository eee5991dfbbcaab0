// Package workload is the perf harness's writer: it writes changes (updates
// and a share of deletes) into a BPF map with batch syscalls, as fast as it
// can or at a fixed rate, records when each batch was written, and keeps the
// contents the map must end with, so a peer's map can be compared with it.
//
// Every value carries the number of the batch that wrote it and the change's
// sequence number: an observer on a peer that sees the value arrive knows
// which batch it came from and so when it was written ([Batch.Start]).
package workload

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/perf/report"
)

// Profile is the shape of the entries written.
type Profile struct {
	// Name labels the profile in reports.
	Name               string
	KeySize, ValueSize int
}

// The profiles of the perf runs: the default, one shaped like a
// connection-tracking entry (a 5-tuple with zone and direction as key, NAT
// and counters as value), and one of values larger than a datagram at a
// 1500-byte MTU, which udpmapsync sends in fragments.
var (
	Small     = Profile{Name: "16 B / 64 B", KeySize: 16, ValueSize: 64}
	Conntrack = Profile{Name: report.ConntrackProfile, KeySize: 40, ValueSize: 128}
	Large     = Profile{Name: report.LargeProfile, KeySize: 16, ValueSize: 4096}
)

// Profiles looks up profiles by the names perfrun's --profiles takes:
// small ([Small]), conntrack ([Conntrack]) and large ([Large]).
func Profiles(names []string) ([]Profile, error) {
	var out []Profile
	for _, n := range names {
		switch n {
		case "small":
			out = append(out, Small)
		case "conntrack":
			out = append(out, Conntrack)
		case "large":
			out = append(out, Large)
		default:
			return nil, fmt.Errorf("profile %q: unknown; use small, conntrack or large", n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no profile to measure")
	}
	return out, nil
}

// valueHeader is the batch number and sequence number every value starts
// with.
const valueHeader = 16

// Config shapes a [Writer].
type Config struct {
	Profile Profile
	// Changes is how many changes to write, the final sentinel update
	// included.
	Changes int
	// Keys is how many distinct keys the updates cycle through; zero means
	// Changes/2, so most keys are written twice and never twice in a row.
	Keys int
	// DeleteShare is the fraction of changes that delete a key the map
	// holds, in whole batches of deletes.
	DeleteShare float64
	// Batch is the most changes one syscall writes.
	Batch int
	// Rate is the changes per second to write at; zero means as fast as
	// possible. At a fixed rate the changes due are written every Tick.
	Rate int
	Tick time.Duration
}

// Batch is one batch syscall of a run.
type Batch struct {
	// First is the sequence number of the batch's first change.
	First, Count int
	Delete       bool
	// Start is when the syscall was made and Done when it returned, in
	// [Now]'s clock.
	Start, Done int64
}

// Result is what a [Writer.Run] did.
type Result struct {
	Batches []Batch
	// Start is when the first batch began, End when the last returned, in
	// [Now]'s clock.
	Start, End int64
	// Updates and Deletes count the changes written.
	Updates, Deletes int
	// CPU is the time the writing thread spent, user and system: with a
	// capture attached it includes the capture program's cost, which the
	// kernel charges to the writer.
	CPU time.Duration
}

// Seconds is how long the writes took.
func (r *Result) Seconds() float64 { return float64(r.End-r.Start) / 1e9 }

// base anchors [Now]: the writer and the observers of a run live in one
// process, so they share this monotonic clock.
var base = time.Now()

// Now is the monotonic time in nanoseconds since the process started.
func Now() int64 { return int64(time.Since(base)) }

// Writer writes one workload into one map.
type Writer struct {
	cfg     Config
	keys    int
	lastSeq []int64 // per key: sequence number of the last update, -1 if absent
	lastBat []uint32
	keyBuf  []byte
	valBuf  []byte
	delNext int // next key the delete cursor looks at
	held    int
}

// New prepares a writer; keys and values are made on the fly.
func New(cfg Config) (*Writer, error) {
	if cfg.Profile.KeySize < 8 || cfg.Profile.ValueSize < valueHeader {
		return nil, fmt.Errorf("workload profile %s: want keys of at least 8 B and values of at least %d B", cfg.Profile.Name, valueHeader)
	}
	if cfg.Changes < 2 || cfg.Batch < 1 || cfg.DeleteShare < 0 || cfg.DeleteShare >= 1 {
		return nil, fmt.Errorf("workload: %d changes, batch %d, delete share %g: want at least 2 changes, a batch of 1 or more, a share in [0, 1)", cfg.Changes, cfg.Batch, cfg.DeleteShare)
	}
	if cfg.Rate > 0 && cfg.Tick <= 0 {
		cfg.Tick = time.Millisecond
	}
	keys := cfg.Keys
	if keys == 0 {
		keys = max(cfg.Changes/2, 1)
	}
	w := &Writer{
		cfg:     cfg,
		keys:    keys,
		lastSeq: make([]int64, keys+1), // the last is the sentinel
		lastBat: make([]uint32, keys+1),
		keyBuf:  make([]byte, cfg.Batch*cfg.Profile.KeySize),
		valBuf:  make([]byte, cfg.Batch*cfg.Profile.ValueSize),
	}
	for i := range w.lastSeq {
		w.lastSeq[i] = -1
	}
	return w, nil
}

// MaxEntries is a hash map size that holds every key of the workload with
// room to spare, so an update never fails for a full map.
func (w *Writer) MaxEntries() uint32 {
	n := uint32(1024)
	for n < uint32(w.keys+1)*5/4 {
		n *= 2
	}
	return n
}

// putKey writes key i into b: its first 8 bytes spread the keys over the
// hash (multiplying by an odd constant is a bijection), the rest repeat i.
func (w *Writer) putKey(b []byte, i int) {
	binary.BigEndian.PutUint64(b, uint64(i)*0x9e3779b97f4a7c15)
	for j := 8; j < len(b); j++ {
		b[j] = byte(i >> (8 * (j % 4)))
	}
}

// putValue writes the value of change seq in batch bat into b.
func putValue(b []byte, bat uint32, seq int64) {
	binary.BigEndian.PutUint64(b, uint64(bat))
	binary.BigEndian.PutUint64(b[8:], uint64(seq))
	for j := valueHeader; j < len(b); j++ {
		b[j] = byte(seq) + byte(j)
	}
}

// BatchOf returns the batch number a value written by a [Writer] carries.
func BatchOf(value []byte) (uint32, bool) {
	if len(value) < valueHeader {
		return 0, false
	}
	return uint32(binary.BigEndian.Uint64(value)), true
}

// Sentinel returns the key written last (alone, in the last batch) and the
// value it is written with: once a peer holds it, every earlier change has
// reached the peer as well if the replicator keeps order.
func (w *Writer) Sentinel(batches int) (key, value []byte) {
	key = make([]byte, w.cfg.Profile.KeySize)
	w.putKey(key, w.keys)
	value = make([]byte, w.cfg.Profile.ValueSize)
	putValue(value, uint32(batches-1), int64(w.cfg.Changes-1))
	return key, value
}

// Want returns the contents the map holds after the run, as key bytes to
// value bytes.
func (w *Writer) Want() map[string]string {
	want := make(map[string]string, w.held+1)
	k := make([]byte, w.cfg.Profile.KeySize)
	v := make([]byte, w.cfg.Profile.ValueSize)
	for i, seq := range w.lastSeq {
		if seq < 0 {
			continue
		}
		w.putKey(k, i)
		putValue(v, w.lastBat[i], seq)
		want[string(k)] = string(v)
	}
	return want
}

// Run writes the workload into m and returns when every change is written
// or ctx ends. It runs on one locked thread, whose CPU time it reports.
func (w *Writer) Run(ctx context.Context, m *loader.Map) (*Result, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu0, err := threadCPU()
	if err != nil {
		return nil, err
	}
	res := &Result{Batches: make([]Batch, 0, w.cfg.Changes/max(w.cfg.Batch, 1)+w.cfg.Changes/1000+16)}
	seq, upd := 0, 0          // upd: updates so far, the key cursor
	last := w.cfg.Changes - 1 // the sentinel's sequence number
	res.Start = Now()
	for seq < last {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("write workload: %w", err)
		}
		n := min(w.cfg.Batch, last-seq)
		if w.cfg.Rate > 0 {
			var err error
			if n, err = w.pace(ctx, res.Start, seq, last); err != nil {
				return nil, err
			}
		}
		bat := uint32(len(res.Batches))
		del := w.held > 0 && float64(res.Deletes) < w.cfg.DeleteShare*float64(seq+n)
		b := Batch{First: seq, Count: n, Delete: del, Start: Now()}
		if del {
			n = w.deletes(n)
			b.Count = n
			if _, err := m.DeleteBatch(w.keyBuf[:n*w.cfg.Profile.KeySize]); err != nil {
				return nil, fmt.Errorf("write workload: %w", err)
			}
			res.Deletes += n
		} else {
			for j := range n {
				w.update(j, (upd+j)%w.keys, bat, int64(seq+j))
			}
			if err := m.UpdateBatch(w.keyBuf[:n*w.cfg.Profile.KeySize], w.valBuf[:n*w.cfg.Profile.ValueSize]); err != nil {
				return nil, fmt.Errorf("write workload: %w", err)
			}
			upd += n
			res.Updates += n
		}
		b.Done = Now()
		res.Batches = append(res.Batches, b)
		seq += n
	}
	w.update(0, w.keys, uint32(len(res.Batches)), int64(last))
	sentinelStart := Now()
	ks, vs := w.cfg.Profile.KeySize, w.cfg.Profile.ValueSize
	if err := m.UpdateBatch(w.keyBuf[:ks], w.valBuf[:vs]); err != nil {
		return nil, fmt.Errorf("write workload sentinel: %w", err)
	}
	res.End = Now()
	res.Batches = append(res.Batches, Batch{First: last, Count: 1, Start: sentinelStart, Done: res.End})
	res.Updates++
	cpu1, err := threadCPU()
	if err != nil {
		return nil, err
	}
	res.CPU = cpu1 - cpu0
	return res, nil
}

// pace waits for the next tick and returns how many changes are due by
// then (at most a batch, at least one).
func (w *Writer) pace(ctx context.Context, start int64, seq, last int) (int, error) {
	for {
		elapsed := Now() - start
		due := int(float64(elapsed) / 1e9 * float64(w.cfg.Rate))
		if n := min(due-seq, w.cfg.Batch, last-seq); n > 0 {
			return n, nil
		}
		next := (elapsed/int64(w.cfg.Tick) + 1) * int64(w.cfg.Tick)
		t := time.NewTimer(time.Duration(next - elapsed))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("write workload: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// update puts change seq, an update of key k in batch bat, at slot j of
// the batch buffers.
func (w *Writer) update(j, k int, bat uint32, seq int64) {
	ks, vs := w.cfg.Profile.KeySize, w.cfg.Profile.ValueSize
	w.putKey(w.keyBuf[j*ks:(j+1)*ks], k)
	putValue(w.valBuf[j*vs:(j+1)*vs], bat, seq)
	if w.lastSeq[k] < 0 {
		w.held++
	}
	w.lastSeq[k], w.lastBat[k] = seq, bat
}

// deletes fills the key buffer with up to n keys the map holds, taken in
// key order behind the update cursor, and returns how many.
func (w *Writer) deletes(n int) int {
	ks := w.cfg.Profile.KeySize
	j := 0
	for scanned := 0; j < n && scanned < w.keys; scanned++ {
		k := w.delNext
		w.delNext = (w.delNext + 1) % w.keys
		if w.lastSeq[k] < 0 {
			continue
		}
		w.putKey(w.keyBuf[j*ks:(j+1)*ks], k)
		w.lastSeq[k] = -1
		w.held--
		j++
	}
	return j
}

// threadCPU is the calling thread's user and system time.
func threadCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, fmt.Errorf("thread CPU time: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
