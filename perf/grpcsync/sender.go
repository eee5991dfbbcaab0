package grpcsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/replication"
)

// Mode is how the sender uses gRPC.
type Mode string

// The modes of a [Sender].
const (
	// Unary sends every change with one call and waits for its answer
	// before the next, to each peer in turn: the proof of concept's design
	// (which also opened a new connection per change; here each peer has
	// one connection, which only flatters the baseline).
	Unary Mode = "unary"
	// Stream sends batches of records on one bidirectional stream per
	// peer, flushed like udpmapsync's datagrams: when the capture is
	// drained, the batch is full, or the oldest change waited a flush
	// interval.
	Stream Mode = "stream"
)

// idleAfter is how long without changes before the sender blocks on the
// capture without a deadline: the kernel wakes a blocked reader for the
// first change after a quiet millisecond (see loader.Capture.SetDeadline).
const idleAfter = 2 * time.Millisecond

// SenderConfig shapes a [Sender].
type SenderConfig struct {
	Source replication.Source
	// Peers are connections to the other nodes' receivers.
	Peers []*grpc.ClientConn
	Mode  Mode
	// FlushInterval bounds how long a change waits in a stream batch.
	FlushInterval time.Duration
	// BatchBytes is the largest stream message.
	BatchBytes int
}

// Sender reads captured changes and sends them to every peer.
type Sender struct {
	cfg     SenderConfig
	streams []grpc.ClientStream
	batch   []byte
	pending int       // records in batch
	since   time.Time // when the oldest change of batch was read
	ch      loader.Change

	// Sent counts the changes sent (once, whatever the number of peers).
	Sent atomic.Uint64
}

// NewSender opens the streams of [Stream] mode; ctx bounds their lives.
func NewSender(ctx context.Context, cfg SenderConfig) (*Sender, error) {
	s := &Sender{cfg: cfg, batch: make([]byte, 0, cfg.BatchBytes)}
	if cfg.Mode == Unary {
		return s, nil
	}
	if cfg.Mode != Stream {
		return nil, fmt.Errorf("--mode %s: use unary or stream", cfg.Mode)
	}
	desc := &serviceDesc.Streams[0]
	for _, conn := range cfg.Peers {
		st, err := conn.NewStream(ctx, desc, methodStream)
		if err != nil {
			return nil, fmt.Errorf("open stream to %s: %w", conn.Target(), err)
		}
		s.streams = append(s.streams, st)
		go drainAcks(st)
	}
	return s, nil
}

// drainAcks reads the receiver's acknowledgements, which only keep the
// stream bidirectional as a real replicator's would be, until it ends.
func drainAcks(st grpc.ClientStream) {
	var ack []byte
	for st.RecvMsg(&ack) == nil {
	}
}

// Run sends changes until the source is closed or fails.
func (s *Sender) Run(ctx context.Context) error {
	var last time.Time
	s.cfg.Source.SetDeadline(time.Time{})
	for {
		err := s.cfg.Source.Read(&s.ch)
		now := time.Now()
		switch {
		case err == nil:
			last = now
			if err := s.add(ctx, now); err != nil {
				return err
			}
			if s.cfg.Mode == Stream && (s.cfg.Source.Buffered() == 0 || now.Sub(s.since) >= s.cfg.FlushInterval) {
				if err := s.flush(); err != nil {
					return err
				}
			}
			s.cfg.Source.SetDeadline(now.Add(s.cfg.FlushInterval))
		case errors.Is(err, os.ErrDeadlineExceeded):
			if err := s.flush(); err != nil {
				return err
			}
			if now.Sub(last) < idleAfter {
				s.cfg.Source.SetDeadline(now.Add(s.cfg.FlushInterval))
			} else {
				s.cfg.Source.SetDeadline(time.Time{})
			}
		case errors.Is(err, os.ErrClosed):
			return s.flush()
		default:
			return fmt.Errorf("read changes: %w", err)
		}
	}
}

// add sends the change at once (Unary) or appends it to the batch,
// flushing the batch first if the record would not fit.
func (s *Sender) add(ctx context.Context, now time.Time) error {
	size := 1 + len(s.ch.Key) + len(s.ch.Value)
	if s.cfg.Mode == Stream && len(s.batch)+size > cap(s.batch) {
		if err := s.flush(); err != nil {
			return err
		}
	}
	if len(s.batch) == 0 {
		s.since = now
	}
	s.batch = append(s.batch, byte(s.ch.Op))
	s.batch = append(s.batch, s.ch.Key...)
	s.batch = append(s.batch, s.ch.Value...)
	s.pending++
	if s.cfg.Mode == Stream {
		return nil
	}
	var ack []byte
	for _, conn := range s.cfg.Peers {
		if err := conn.Invoke(ctx, methodApply, &s.batch, &ack); err != nil {
			return fmt.Errorf("apply on %s: %w", conn.Target(), err)
		}
	}
	s.batch, s.pending = s.batch[:0], 0
	s.Sent.Add(1)
	return nil
}

// flush sends the batch to every peer.
func (s *Sender) flush() error {
	if len(s.batch) == 0 || s.cfg.Mode != Stream {
		return nil
	}
	for _, st := range s.streams {
		if err := st.SendMsg(&s.batch); err != nil {
			if errors.Is(err, io.EOF) {
				err = st.RecvMsg(new([]byte)) // the stream's real error
			}
			return fmt.Errorf("send batch: %w", err)
		}
	}
	s.batch = s.batch[:0]
	s.Sent.Add(uint64(s.pending))
	s.pending = 0
	return nil
}

// Close ends the streams.
func (s *Sender) Close() error {
	var errs []error
	for _, st := range s.streams {
		errs = append(errs, st.CloseSend())
	}
	return errors.Join(errs...)
}
