package grpcsync

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// codecName is the content subtype both ends select the raw codec by
// ("application/grpc+raw").
const codecName = "raw"

// rawCodec carries messages as the bytes they are: a message is a *[]byte.
// It stands in for protoc-generated protobuf code: no schema compiler is
// needed, and no encoding cost at all, so the baselines are measured at
// their most favourable.
type rawCodec struct{}

func init() { encoding.RegisterCodecV2(rawCodec{}) }

// Marshal copies the message into a pooled buffer: gRPC may still be
// sending it after SendMsg returns, while the caller reuses its slice.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: marshal %T, want *[]byte", v)
	}
	return mem.BufferSlice{mem.Copy(*b, mem.DefaultBufferPool())}, nil
}

// Unmarshal copies the message into *v, reusing its capacity.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: unmarshal into %T, want *[]byte", v)
	}
	n := data.Len()
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	*b = (*b)[:n]
	data.CopyTo(*b)
	return nil
}

func (rawCodec) Name() string { return codecName }

// WithRawCodec makes a client connection's calls use the raw codec, as the
// receiver expects.
func WithRawCodec() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.CallContentSubtype(codecName))
}
