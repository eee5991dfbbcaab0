package wire

import (
	"encoding/binary"
	"errors"
)

// Digest tree layout, see FORMAT.md "Digests".
const (
	// DigestFanout is how many children each bucket of a digest tree
	// has: the next DigestBits bits of the key's hash pick one.
	DigestFanout = 64
	DigestBits   = 6
	// MaxDigestDepth is the deepest level of a digest tree: its leaves
	// are the 64^3 buckets of 18 bits of the key's hash.
	MaxDigestDepth = 3

	// BucketSize is a bucket's address: map fingerprint, depth, prefix.
	BucketSize = 9
	// DigestChildSize is one child's sum and newest stamp.
	DigestChildSize = 16
	// DigestSize is the length of a [KindDigest] body: the bucket, the
	// round, the sender's stamp, and its 64 children.
	DigestSize = BucketSize + 4 + 8 + DigestFanout*DigestChildSize
	// DigestDiffSize is the length of a [KindDigestDiff] body: the
	// bucket, the round and the mask of children that differ.
	DigestDiffSize = BucketSize + 4 + 8
	// BucketFilterSize is the length of a [KindSyncRequest] body that
	// asks for some buckets only: the bucket and a mask of its children.
	BucketFilterSize = BucketSize + 8
)

// ErrBadBucket rejects a bucket address outside the digest tree: a depth
// whose children would be below [MaxDigestDepth], or a prefix longer
// than its depth allows.
var ErrBadBucket = errors.New("wire: digest bucket outside the tree")

// Bucket names one inner bucket of a map's digest tree: the keys whose
// hash begins with Prefix, Depth × [DigestBits] bits long. Depth 0,
// prefix 0 is the whole map. Its children are at Depth+1.
type Bucket struct {
	Map    uint32 // the map's fingerprint
	Depth  uint8  // 0 to MaxDigestDepth-1
	Prefix uint32 // below 64^Depth
}

// Check returns [ErrBadBucket] unless b is an inner bucket of the tree.
func (b *Bucket) Check() error {
	if b.Depth >= MaxDigestDepth || uint64(b.Prefix) >= 1<<(DigestBits*uint(b.Depth)) {
		return ErrBadBucket
	}
	return nil
}

func (b *Bucket) appendTo(d []byte) []byte {
	d = binary.BigEndian.AppendUint32(d, b.Map)
	d = append(d, b.Depth)
	return binary.BigEndian.AppendUint32(d, b.Prefix)
}

func (b *Bucket) unmarshal(d []byte) error {
	*b = Bucket{Map: binary.BigEndian.Uint32(d), Depth: d[4], Prefix: binary.BigEndian.Uint32(d[5:])}
	return b.Check()
}

// DigestChild is what a node holds under one child of a bucket: the sum
// of its entries' hashes, and the newest stamp among them and among the
// deletes it remembers there.
type DigestChild struct {
	Sum    uint64
	Newest uint64
}

// Digest is the body of a [KindDigest] datagram: a node's digests of the
// 64 children of one bucket of a map, computed from a read of the map
// begun at Stamp, in its digest round Round.
type Digest struct {
	Bucket
	Round    uint32
	Stamp    uint64
	Children [DigestFanout]DigestChild
}

// AppendTo appends the encoded body, [DigestSize] bytes, to d. It
// returns [ErrBadBucket] for a bucket Unmarshal would refuse, appending
// nothing.
func (g *Digest) AppendTo(d []byte) ([]byte, error) {
	if err := g.Check(); err != nil {
		return d, err
	}
	d = g.appendTo(d)
	d = binary.BigEndian.AppendUint32(d, g.Round)
	d = binary.BigEndian.AppendUint64(d, g.Stamp)
	for i := range g.Children {
		d = binary.BigEndian.AppendUint64(d, g.Children[i].Sum)
		d = binary.BigEndian.AppendUint64(d, g.Children[i].Newest)
	}
	return d, nil
}

// Unmarshal decodes a [KindDigest] body: [ErrShortBuffer] or
// [ErrBadLength] unless it is exactly [DigestSize] bytes, [ErrBadBucket]
// for a bucket outside the tree.
func (g *Digest) Unmarshal(body []byte) error {
	if err := exactly(body, DigestSize); err != nil {
		return err
	}
	if err := g.Bucket.unmarshal(body); err != nil {
		return err
	}
	g.Round = binary.BigEndian.Uint32(body[BucketSize:])
	g.Stamp = binary.BigEndian.Uint64(body[BucketSize+4:])
	c := body[BucketSize+12:]
	for i := range g.Children {
		g.Children[i] = DigestChild{Sum: binary.BigEndian.Uint64(c[i*DigestChildSize:]),
			Newest: binary.BigEndian.Uint64(c[i*DigestChildSize+8:])}
	}
	return nil
}

// DigestDiff is the body of a [KindDigestDiff] datagram: the answer to a
// [Digest], naming the children of its bucket whose digests differ from
// the answering node's and were not written to lately on either side.
type DigestDiff struct {
	Bucket
	Round  uint32
	Differ uint64 // bit i: child i
}

// AppendTo appends the encoded body, [DigestDiffSize] bytes, to d,
// refusing a bucket outside the tree like Unmarshal.
func (g *DigestDiff) AppendTo(d []byte) ([]byte, error) {
	if err := g.Check(); err != nil {
		return d, err
	}
	d = g.appendTo(d)
	d = binary.BigEndian.AppendUint32(d, g.Round)
	return binary.BigEndian.AppendUint64(d, g.Differ), nil
}

// Unmarshal decodes a [KindDigestDiff] body, exactly [DigestDiffSize]
// bytes.
func (g *DigestDiff) Unmarshal(body []byte) error {
	if err := exactly(body, DigestDiffSize); err != nil {
		return err
	}
	if err := g.Bucket.unmarshal(body); err != nil {
		return err
	}
	g.Round = binary.BigEndian.Uint32(body[BucketSize:])
	g.Differ = binary.BigEndian.Uint64(body[BucketSize+4:])
	return nil
}

// BucketFilter is the body of a [KindSyncRequest] that asks for part of
// one map only: the keys under the children of Bucket set in Children.
// A request without a body asks for every map, whole.
type BucketFilter struct {
	Bucket
	Children uint64 // bit i: child i; not 0
}

// AppendTo appends the encoded body, [BucketFilterSize] bytes, to d,
// refusing what Unmarshal would.
func (f *BucketFilter) AppendTo(d []byte) ([]byte, error) {
	if err := f.Check(); err != nil {
		return d, err
	}
	if f.Children == 0 {
		return d, ErrBadBucket
	}
	d = f.appendTo(d)
	return binary.BigEndian.AppendUint64(d, f.Children), nil
}

// Unmarshal decodes a filtered [KindSyncRequest] body, exactly
// [BucketFilterSize] bytes, with at least one child.
func (f *BucketFilter) Unmarshal(body []byte) error {
	if err := exactly(body, BucketFilterSize); err != nil {
		return err
	}
	if err := f.Bucket.unmarshal(body); err != nil {
		return err
	}
	if f.Children = binary.BigEndian.Uint64(body[BucketSize:]); f.Children == 0 {
		return ErrBadBucket
	}
	return nil
}

// exactly returns [ErrShortBuffer] or [ErrBadLength] unless body is n
// bytes long.
func exactly(body []byte, n int) error {
	switch {
	case len(body) < n:
		return ErrShortBuffer
	case len(body) > n:
		return ErrBadLength
	}
	return nil
}
