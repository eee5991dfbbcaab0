package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

// TestDigestLayout checks the digest bodies byte by byte against
// FORMAT.md's tables.
func TestDigestLayout(t *testing.T) {
	g := wire.Digest{Bucket: wire.Bucket{Map: 0x73acb739, Depth: 2, Prefix: 4095}, Round: 7, Stamp: 0x0102030405060708}
	g.Children[63] = wire.DigestChild{Sum: 0xaa, Newest: 0xbb}
	b, err := g.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	if len(b) != 1045 || be.Uint32(b[0:]) != 0x73acb739 || b[4] != 2 || be.Uint32(b[5:]) != 4095 ||
		be.Uint32(b[9:]) != 7 || be.Uint64(b[13:]) != 0x0102030405060708 ||
		be.Uint64(b[21+63*16:]) != 0xaa || be.Uint64(b[21+63*16+8:]) != 0xbb {
		t.Fatalf("digest body %x", b)
	}
	d, _ := (&wire.DigestDiff{Bucket: g.Bucket, Round: 7, Differ: 1 << 63}).AppendTo(nil)
	if len(d) != 21 || !bytes.Equal(d[:9], b[:9]) || be.Uint32(d[9:]) != 7 || be.Uint64(d[13:]) != 1<<63 {
		t.Fatalf("digest diff body %x", d)
	}
	f, _ := (&wire.BucketFilter{Bucket: g.Bucket, Children: 5}).AppendTo(nil)
	if len(f) != 17 || !bytes.Equal(f[:9], b[:9]) || be.Uint64(f[9:]) != 5 {
		t.Fatalf("bucket filter body %x", f)
	}
}

// TestDigestRefusals checks what the decoders refuse, and that the
// encoders refuse the same.
func TestDigestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    wire.Bucket
		err  error
	}{
		{"root", wire.Bucket{Depth: 0, Prefix: 0}, nil},
		{"root with a prefix", wire.Bucket{Depth: 0, Prefix: 1}, wire.ErrBadBucket},
		{"deepest parent", wire.Bucket{Depth: 2, Prefix: 4095}, nil},
		{"prefix too long", wire.Bucket{Depth: 2, Prefix: 4096}, wire.ErrBadBucket},
		{"a leaf", wire.Bucket{Depth: 3}, wire.ErrBadBucket},
		{"far too deep", wire.Bucket{Depth: 255, Prefix: 1<<32 - 1}, wire.ErrBadBucket},
	} {
		g := wire.Digest{Bucket: tc.b}
		if _, err := g.AppendTo(nil); !errors.Is(err, tc.err) {
			t.Errorf("%s: AppendTo %v, want %v", tc.name, err, tc.err)
		}
		ok, _ := (&wire.Digest{}).AppendTo(nil)
		copy(ok[4:], []byte{tc.b.Depth, byte(tc.b.Prefix >> 24), byte(tc.b.Prefix >> 16), byte(tc.b.Prefix >> 8), byte(tc.b.Prefix)})
		if err := g.Unmarshal(ok); !errors.Is(err, tc.err) {
			t.Errorf("%s: Unmarshal %v, want %v", tc.name, err, tc.err)
		}
	}
	var g wire.Digest
	body, _ := g.AppendTo(nil)
	if err := g.Unmarshal(body[:len(body)-1]); !errors.Is(err, wire.ErrShortBuffer) {
		t.Errorf("short digest: %v", err)
	}
	if err := g.Unmarshal(append(body, 0)); !errors.Is(err, wire.ErrBadLength) {
		t.Errorf("long digest: %v", err)
	}
	var f wire.BucketFilter
	if _, err := f.AppendTo(nil); !errors.Is(err, wire.ErrBadBucket) {
		t.Errorf("a filter without children encoded: %v", err)
	}
	if err := f.Unmarshal(make([]byte, wire.BucketFilterSize)); !errors.Is(err, wire.ErrBadBucket) {
		t.Errorf("a filter without children decoded: %v", err)
	}
}
