package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/replication"
)

// counterMap is a merge=sum map of the daemon: the kernel program that
// adds to it, its contribution map's target, and the file its
// contributions are kept in across a restart.
type counterMap struct {
	adder  *loader.Adder
	target *replication.CounterTarget
	saved  string
}

// openCounters makes the contribution map of sum map m (see "Counters" in
// docs/ARCHITECTURE.md), taking the contributions the last daemon saved.
// Without them, if a daemon ran here before (ranBefore: it crashed), the
// kernel map's values mix this node's counts with its peers' in a way it
// can no longer tell apart: it clears them, and its initial sync brings
// every contribution back, its own as last sent included. The resets of
// keys the map no longer holds are remembered for horizon, the
// --tombstone-horizon.
func openCounters(m *loader.Map, o mapopt.Options, node uint32, stateDir string, ranBefore bool, horizon time.Duration, log *slog.Logger) (*counterMap, error) {
	adder, err := loader.NewAdder(m)
	if err != nil {
		return nil, fmt.Errorf("--map %s, merge=sum: %w", m.Name, err)
	}
	if why := adder.AtRisk(); why != "" {
		log.Warn("a per-CPU datapath program that runs in process context (cgroup, tracing, syscall programs; not XDP or tc) "+
			"must update its CPU's slot with __sync_fetch_and_add: one read then written can be preempted here, and overwrite the peers' counts added meanwhile "+
			"(counter_adds_at_risk counts those adds)", "map", m.Name, "why", why)
	}
	cm := &counterMap{adder: adder, saved: filepath.Join(stateDir, "counters-"+m.Name)}
	cm.target = replication.NewCounterTarget(m, adder, int(m.KeySize), int(m.ValueSize), int(max(m.CPUs, 1)), node, o.Origins, time.Now)
	cm.target.SetHorizon(horizon)
	loaded, err := cm.target.Load(cm.saved)
	if err != nil {
		adder.Close()
		return nil, fmt.Errorf("--state-dir %s: %w", stateDir, err)
	}
	if !loaded && ranBefore {
		log.Warn("no saved counters of the last run (it crashed?): clearing the map, whose values mix this node's counts with its peers'; "+
			"the initial sync brings every node's contribution back, this node's counts since it last sent them are lost", "map", m.Name)
		if err := cm.target.Forget(); err != nil {
			adder.Close()
			return nil, fmt.Errorf("--map %s, merge=sum: %w", m.Name, err)
		}
	}
	return cm, nil
}

// close saves the contributions for the next start and releases the
// program. The node has stopped: nothing adds to them any more.
func (cm *counterMap) close(log *slog.Logger) {
	if err := cm.target.Save(cm.saved); err != nil {
		log.Error("saving the counters failed: the next start clears the map and relearns it from the peers", "file", cm.saved, "error", err)
	}
	cm.adder.Close()
}

// idleSource is the [replication.Source] of a daemon whose maps are all
// sum maps, which are replicated by their scans alone: it never yields a
// change.
type idleSource struct {
	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed by SetDeadline and Close
	closed   bool
}

func newIdleSource() *idleSource { return &idleSource{wake: make(chan struct{})} }

// errIdleClosed is what Read returns once the source is closed.
var errIdleClosed = errors.New("source closed")

func (s *idleSource) Read(*loader.Change) error {
	for {
		s.mu.Lock()
		closed, deadline, wake := s.closed, s.deadline, s.wake
		s.mu.Unlock()
		if closed {
			return errIdleClosed
		}
		var t *time.Timer
		var timeout <-chan time.Time
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		select {
		case <-wake:
			if t != nil {
				t.Stop()
			}
		case <-timeout:
			return os.ErrDeadlineExceeded
		}
	}
}

func (s *idleSource) SetDeadline(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	if !s.closed {
		close(s.wake)
		s.wake = make(chan struct{})
	}
}

func (s *idleSource) Buffered() int { return 0 }

func (s *idleSource) Overflows() (uint64, error) { return 0, nil }

// Close ends every Read.
func (s *idleSource) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
	return nil
}
