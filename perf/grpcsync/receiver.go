// Package grpcsync is the gRPC baseline the perf harness compares
// udpmapsync with: the same capture (loader.Capture, as a
// [replication.Source]) and the same apply (loader.Map, as a
// [replication.Target]), with gRPC over TCP as the only difference. It has
// two modes: one unary call per change, the design of the proof of concept
// the project started from, and a bidirectional stream of batched records.
//
// Messages are raw bytes handled by a hand-written codec (codec.go), not
// protobuf: a record is op (1 byte) | key | value (updates only), and the
// sizes come from the map, as on udpmapsync's wire.
package grpcsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"google.golang.org/grpc"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/replication"
)

// The gRPC names of the service and its methods.
const (
	serviceName  = "udpmapsync.perf.Sync"
	methodApply  = "/" + serviceName + "/Apply"
	methodStream = "/" + serviceName + "/Stream"
)

// syncServer is what the service descriptor dispatches to; [*Receiver]
// implements it.
type syncServer interface {
	applyOne(rec []byte) error
	serveStream(stream grpc.ServerStream) error
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*syncServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Apply",
		Handler: func(srv any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var rec []byte
			if err := dec(&rec); err != nil {
				return nil, err
			}
			return &[]byte{}, srv.(syncServer).applyOne(rec)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(syncServer).serveStream(stream)
		},
	}},
}

var errBadRecord = errors.New("malformed record")

// Receiver applies the changes peers send to the local map.
type Receiver struct {
	target             replication.Target
	keySize, valueSize int
	// Applied counts the changes written to or deleted from the map.
	Applied atomic.Uint64
}

// NewReceiver returns a receiver applying to target, a map with the given
// key and value sizes.
func NewReceiver(target replication.Target, keySize, valueSize int) *Receiver {
	return &Receiver{target: target, keySize: keySize, valueSize: valueSize}
}

// Register adds the sync service to s.
func (r *Receiver) Register(s *grpc.Server) { s.RegisterService(&serviceDesc, r) }

func (r *Receiver) applyOne(rec []byte) error {
	if len(rec) < 1+r.keySize {
		return errBadRecord
	}
	key := rec[1 : 1+r.keySize]
	switch ops.Op(rec[0]) {
	case ops.Update:
		if len(rec) != 1+r.keySize+r.valueSize {
			return errBadRecord
		}
		if err := r.target.UpdateBatch(key, rec[1+r.keySize:]); err != nil {
			return err
		}
	case ops.Delete:
		if len(rec) != 1+r.keySize {
			return errBadRecord
		}
		if _, err := r.target.DeleteBatch(key); err != nil {
			return err
		}
	default:
		return errBadRecord
	}
	r.Applied.Add(1)
	return nil
}

// serveStream applies every batch of a stream, acknowledging each with the
// number of records it held.
func (r *Receiver) serveStream(stream grpc.ServerStream) error {
	var msg, keys, values []byte
	ack := make([]byte, 8)
	for {
		if err := stream.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		n, err := r.applyBatch(msg, &keys, &values)
		if err != nil {
			return fmt.Errorf("apply batch: %w", err)
		}
		ack = ack[:0]
		for i := 56; i >= 0; i -= 8 {
			ack = append(ack, byte(n>>i))
		}
		if err := stream.SendMsg(&ack); err != nil {
			return err
		}
	}
}

// applyBatch applies the records of msg in order, each run of updates with
// one UpdateBatch and each run of deletes with one DeleteBatch. keys and
// values are scratch buffers kept across batches.
func (r *Receiver) applyBatch(msg []byte, keys, values *[]byte) (int, error) {
	n := 0
	var run ops.Op
	flush := func() error {
		var err error
		switch run {
		case ops.Update:
			err = r.target.UpdateBatch(*keys, *values)
		case ops.Delete:
			_, err = r.target.DeleteBatch(*keys)
		}
		*keys, *values = (*keys)[:0], (*values)[:0]
		return err
	}
	for len(msg) > 0 {
		op := ops.Op(msg[0])
		size := 1 + r.keySize
		if op == ops.Update {
			size += r.valueSize
		} else if op != ops.Delete {
			return n, errBadRecord
		}
		if len(msg) < size {
			return n, errBadRecord
		}
		if op != run {
			if err := flush(); err != nil {
				return n, err
			}
			run = op
		}
		*keys = append(*keys, msg[1:1+r.keySize]...)
		if op == ops.Update {
			*values = append(*values, msg[1+r.keySize:size]...)
		}
		msg = msg[size:]
		n++
	}
	if err := flush(); err != nil {
		return n, err
	}
	r.Applied.Add(uint64(n))
	return n, nil
}
