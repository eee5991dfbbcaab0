// Package epoch hands out boot epochs: numbers that name one run of a
// daemon and only grow across its restarts, whatever the wall clock does.
//
// udpmapsync tells a restarted node from its previous run by the epoch in
// every datagram, and package seal derives each run's key from it, so an
// epoch must never repeat for a node, and never go back. The clock alone
// cannot promise that: it steps back, by NTP or by hand, and may start
// wrong on a machine without a battery. [Next] takes the larger of the
// clock and the last epoch stored in a file plus one, and stores the new
// one durably before returning it. Epochs are therefore nanoseconds since
// 1970 while the clock is right, which makes them readable as the start
// of a run, and keep growing by one a restart while it is behind.
package epoch

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ErrCorrupt means the epoch file does not hold a decimal number, or holds
// the largest one, after which no epoch is left.
var ErrCorrupt = errors.New("epoch: corrupt epoch file")

// corruptError matches ErrCorrupt and has a message of its own.
type corruptError struct{ msg string }

func (e *corruptError) Error() string        { return e.msg }
func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

// Next returns a new epoch for the daemon whose epoch file is path: the
// larger of the last epoch in the file plus one and now as nanoseconds
// since 1970, and never 0. Before it returns, the new epoch is in the
// file, durably: written to a temporary file beside it, synced, renamed
// over it, and the directory synced. A missing file counts as epoch 0, and
// is created, with its directory if need be, with modes 0600 and 0700.
//
// Next holds an exclusive flock(2) on path + ".lock" from reading to
// writing, so that the daemons of one host sharing a file, and goroutines
// of one process, each get an epoch of their own, larger than every epoch
// handed out before.
//
// A file that does not hold a decimal number yields an error that wraps
// [ErrCorrupt] and says what to do.
func Next(path string, now time.Time) (uint64, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("next epoch: %w", err)
	}
	unlock, err := lock(path + ".lock")
	if err != nil {
		return 0, err
	}
	defer unlock()

	last, err := read(path)
	if err != nil {
		return 0, err
	}
	if last == math.MaxUint64 {
		return 0, &corruptError{fmt.Sprintf(
			"next epoch: %s holds %d, the largest epoch, so none is left; %s", path, last, deleteAdvice(path))}
	}
	next := last + 1
	if ns := now.UnixNano(); ns > 0 && uint64(ns) > next {
		next = uint64(ns)
	}
	if err := write(path, next); err != nil {
		return 0, err
	}
	return next, nil
}

// lock takes an exclusive flock on the lock file at path, creating it,
// and returns its release. The lock file stays: removing it would let a
// process lock a new file while another holds the old one.
func lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock epoch file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock epoch file %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// read returns the epoch stored at path, 0 if there is no file.
func read(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read epoch file: %w", err)
	}
	text := bytes.TrimSpace(data)
	last, err := strconv.ParseUint(string(text), 10, 64)
	if err != nil {
		what := "does not hold a decimal number"
		switch {
		case len(text) == 0:
			what = "is empty"
		case errors.Is(err, strconv.ErrRange):
			what = "holds a number larger than any epoch"
		}
		return 0, &corruptError{fmt.Sprintf("read epoch file %s: %s; %s", path, what, deleteAdvice(path))}
	}
	return last, nil
}

func deleteAdvice(path string) string {
	return fmt.Sprintf("if no udpmapsync daemon runs on this host, delete it to start again from the clock: "+
		"that is safe unless the clock is now behind the last epoch handed out, when a restarted daemon "+
		"could reuse an epoch (rm %s)", path)
}

// write stores epoch in the file at path durably: a temporary file beside
// it, synced, renamed over it, then the directory synced so that the
// rename is on disk too.
func write(path string, epoch uint64) error {
	tmp := path + ".tmp"
	// The lock is held, so a file by that name is left over from a crash:
	// start afresh, with our mode, rather than inherit its own.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write epoch file: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write epoch file: %w", err)
	}
	_, err = f.Write(strconv.AppendUint(nil, epoch, 10))
	if err == nil {
		_, err = f.Write([]byte{'\n'})
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write epoch file %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("write epoch file %s: sync directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write epoch file %s: sync directory: %w", path, err)
	}
	return nil
}
