// Package ops defines the operations a map change can be: the one
// definition that the capture (package loader), the datagram format
// (package wire) and the protocol (package replication) share. The capture
// programs in bpf/ keep their own copy (CAPTURE_OP_* in bpf/capture.h);
// a test in package loader checks that the two agree.
package ops

import "strconv"

// Op is what a change did to its key.
type Op uint8

// The operations. The numbers are on the wire and in the capture's ring
// buffer samples: they never change.
const (
	Update Op = 1 // the key was created or overwritten; a value goes with it
	Delete Op = 2 // the key was removed
)

// Valid reports whether o is one of the operations.
func (o Op) Valid() bool { return o == Update || o == Delete }

// String returns "update", "delete" or "op(N)".
func (o Op) String() string {
	switch o {
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}
