package replication

// Native fuzz tests of the receive side against the in-memory fakes of
// fakes_test.go: the maps and the socket are fakes so that millions of
// datagram sequences run in seconds; netns_test.go covers the real ones.

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// seqDatagram is change datagram seq of peerNode that writes key seq
// (4 bytes, big-endian) and the "last" key, both with value seq.
func (f *receiverFixture) seqDatagram(t testing.TB, seq uint64) []byte {
	var b changesBuilder
	b.start()
	v := fmt.Sprintf("%8d", seq%100_000_000)
	b.add(t, f.fpFlow, ops.Update, string(binary.BigEndian.AppendUint32(nil, uint32(seq))), v)
	b.add(t, f.fpFlow, ops.Update, "last", v)
	return b.finish(peerNode, 1, seq)
}

// appliedSeqs returns, in the order they were written, the sequence
// numbers of the datagrams whose records reached the map.
func appliedSeqs(f *receiverFixture) []uint64 {
	var out []uint64
	for _, c := range f.flows.calls {
		for o := 0; o+4 <= len(c.keys); o += 4 {
			if k := string(c.keys[o : o+4]); k != "last" {
				out = append(out, uint64(binary.BigEndian.Uint32(c.keys[o:])))
			}
		}
	}
	return out
}

// FuzzStream feeds one peer's stream of 64 datagrams in an order the
// input chooses, with duplicates, losses, announces, retransmits, "gone"
// answers, forged far numbers and the passing of time. Whatever the
// order, datagrams are applied in sequence, none twice, none forged, the
// hold stays within its bounds, and once every datagram has been
// delivered and nothing was given up, all were applied.
//
// Each datagram is built once, so that sent again it carries the same
// records with the same stamps, as the sender's resend buffer does. That
// matters once the peer has been silent for the silence period: it is
// forgotten, and heard again in the same epoch it is a new peer whose
// stream this ready node asks for from 1 (see [dispatcher.peer]), so its
// datagrams already applied come again. That is correct: their records
// are no newer than what this node knows of their keys, and the merge
// skips them as stale, so the map is written once per datagram. Within
// one binding of the peer, a stale record is a datagram the stream let
// through twice: the target fails on it.
func FuzzStream(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5})
	f.Add([]byte{5, 4, 3, 2, 1, 0})
	f.Add([]byte{0, 0x80, 2, 0xc1, 1, 0xe0, 0xf0, 3})
	f.Add([]byte{10, 0xff, 0xfe, 0xe5, 0xd0, 0xc3, 63})
	const total = 64
	f.Fuzz(func(t *testing.T, script []byte) {
		fx := newReceiverFixture(t)
		sent := make([][]byte, total+1)
		for seq := uint64(1); seq <= total; seq++ {
			sent[seq] = fx.seqDatagram(t, seq)
		}
		now := time.Now()
		fx.handleAt(now, peerA, sent[1]) // binds the peer at 1
		gaveUp := false
		for i, b := range script {
			switch arg := uint64(b & 0x3f); b >> 6 {
			case 0: // a datagram, maybe again
				fx.handleAt(now, peerA, sent[1+arg%total])
			case 1: // a resend
				fx.handleAt(now, peerA, retransmitted(sent[1+arg%total]))
			case 2: // a forged far number: beyond any window
				fx.handleAt(now, peerA, fx.seqDatagram(t, uint64(1)<<(20+arg%40)+uint64(i)))
			default:
				switch arg >> 4 {
				case 0: // time passes
					now = now.Add(time.Duration(arg&0xf) * 50 * time.Millisecond)
					before := fx.stats.ResyncNeeded.Load()
					fx.n.dispatch.onTimers(now, nil)
					gaveUp = gaveUp || fx.stats.ResyncNeeded.Load() > before
				case 1: // an announce
					fx.handleAt(now, peerA, announce(t, peerNode, 1, 1+arg&0xf*4))
				case 2: // a forged announce
					fx.handleAt(now, peerA, announce(t, peerNode, 1, uint64(1)<<(30+arg&0xf)))
				default: // the peer's "gone" for an early range
					before := fx.stats.ResyncNeeded.Load()
					fx.handleAt(now, peerA, goneDatagram(1, 1+arg&0xf))
					gaveUp = gaveUp || fx.stats.ResyncNeeded.Load() > before
				}
			}
			checkStream(t, fx, total)
		}
		p := fx.n.peers.byNode[peerNode]
		if p == nil {
			return // silent for longer than the silence period: forgotten, as it should be
		}
		if p.stream.paused {
			return // a resync is asked for; its answer would settle the rest
		}
		for seq := uint64(1); seq <= total; seq++ {
			fx.handleAt(now, peerA, retransmitted(sent[seq]))
		}
		checkStream(t, fx, total)
		if got := appliedSeqs(fx); !gaveUp && len(got) != total {
			t.Errorf("applied %d of %d datagrams, with none given up: %v", len(got), total, got)
		}
	})
}

// checkStream checks the invariants of the fixture's one stream: each
// datagram applied at most once and none forged; in order, too, while the
// peer was never forgotten. A peer forgotten after a gap it gave up is
// learned anew, and the datagrams of that gap may then come after later
// ones: under versions that is correct, each record merged by its own.
func checkStream(t *testing.T, fx *receiverFixture, total int) {
	t.Helper()
	ordered := fx.stats.PeersExpired.Load() == 0
	var prev uint64
	seen := make(map[uint64]bool)
	for _, seq := range appliedSeqs(fx) {
		if seen[seq] || seq == 0 || seq > uint64(total) || ordered && seq <= prev {
			t.Fatalf("applied %v: out of order, twice, or forged", appliedSeqs(fx))
		}
		seen[seq], prev = true, seq
	}
	if fx.stats.PeersExpired.Load() == 0 && fx.stats.Stale.Load() != 0 {
		t.Fatalf("%d records stale with the peer never forgotten: a datagram was let through twice", fx.stats.Stale.Load())
	}
	p := fx.n.peers.byNode[peerNode]
	if p == nil {
		return
	}
	s := &p.stream
	if s.n > int(s.window) || s.bytes > maxHeldBytes || s.seen > s.windowEnd() || s.next > uint64(total)+1 {
		t.Fatalf("stream out of bounds: next %d seen %d held %d (%d bytes), window %d", s.next, s.seen, s.n, s.bytes, s.window)
	}
	if got := fx.stats.Held.Load(); got != uint64(s.n) {
		t.Fatalf("held counter %d, stream holds %d", got, s.n)
	}
}

// goneDatagram is peerNode's answer that it no longer holds first..last.
func goneDatagram(first, last uint64) []byte {
	n := wire.Nack{Node: peerNode, Epoch: 1, N: 1, Ranges: [wire.MaxNackRanges]wire.Range{{First: first, Last: last}}}
	h := wire.Header{Kind: wire.KindGone, Count: 1, Node: peerNode, Epoch: 1}
	d, _ := h.AppendTo(nil)
	d, _ = n.AppendTo(d)
	return d
}

// FuzzResyncClient delivers a 40-datagram snapshot in an order the input
// chooses, with duplicates, forged numbers (0, past the window, the top of
// the range), early and forged ends. The resync completes exactly once
// every datagram and the end have arrived, then the map holds exactly
// the snapshot; before that it never does more than apply records.
func FuzzResyncClient(f *testing.F) {
	f.Add([]byte{1, 2, 3, 0x80})
	f.Add([]byte{0x80, 40, 39, 38, 1})
	f.Add([]byte{0xc0, 0xff, 0xc1, 0x41, 7})
	const total = 40
	f.Fuzz(func(t *testing.T, script []byte) {
		fx, id := snapshotFixture(t)
		fx.flows.mu.Lock()
		fx.flows.state["old!"] = "old-old!" // not in the snapshot: kept, and sent back
		fx.flows.mu.Unlock()
		snap := func(n uint32) []byte { return fx.snapshotDatagram(t, id, n, fmt.Sprintf("s%03d", n%1000)) }
		got := map[uint32]bool{}
		ended := false
		for _, b := range script {
			arg := uint32(b & 0x3f)
			switch b >> 6 {
			case 0, 1:
				n := 1 + arg%total
				fx.handle(peerA, snap(n))
				got[n] = true
			case 2:
				fx.handle(peerA, syncEnd(id, total))
				ended = true
			default:
				// An end numbered within the window is the peer's word (it
				// would take the peer's address and the random request id
				// to forge); one past it is not.
				forged := []uint32{0, total + transferWindow + arg, 1<<32 - 1 - arg}[arg%3]
				fx.handle(peerA, snap(forged))
				if forged != 0 {
					fx.handle(peerA, syncEnd(id, forged))
				}
			}
			if done := fx.stats.ResyncsReceived.Load() > 0; done != (ended && len(got) == total) {
				t.Fatalf("resync done %v after %d of %d datagrams (end %v)", done, len(got), total, ended)
			}
			if done := fx.stats.ResyncsReceived.Load() > 0; done {
				break
			}
		}
		if fx.stats.ResyncsReceived.Load() == 0 {
			for n := uint32(1); n <= total; n++ {
				fx.handle(peerA, snap(n))
			}
			fx.handle(peerA, syncEnd(id, total))
		}
		state := fx.flows.snapshot()
		// key1 came in the peer's stream before the snapshot, which (made
		// up here) lacks it: it is sent back too.
		if fx.stats.ResyncsReceived.Load() != 1 || len(state) != total+2 || state["old!"] != "old-old!" || fx.stats.SyncPushed.Load() != 2 {
			t.Fatalf("after the whole snapshot: resyncs %d, %d entries (want the %d of the snapshot, key1 and old!), %d sent back %v",
				fx.stats.ResyncsReceived.Load(), len(state), total, fx.stats.SyncPushed.Load(), state)
		}
	})
}

// FuzzReceivePath hands the node whole sequences of arbitrary datagrams,
// cut from the input, between valid ones of its peer: no panic, no hang,
// no write of a size other than the map's, and a map no datagram names
// left untouched.
func FuzzReceivePath(f *testing.F) {
	fx := newReceiverFixture(f)
	cookie := func(k wire.Kind) []byte {
		h := wire.Cookie{Slot: 3, Tag: 0x0102030405060708}.Header(k, peerNode, 1)
		d, _ := h.AppendTo(nil)
		return d
	}
	// The peer's flows with a clock field this node's lacks.
	clocked := fx.tab.byID(10).Desc
	clocked.Fields = []wire.Field{{Kind: wire.FieldMonoS, Offset: 0, Size: 4}}
	for _, d := range [][]byte{
		fx.seqDatagram(f, 1), announce(f, peerNode, 1, 3), announce(f, peerNode, 1, 3, clocked), goneDatagram(1, 2), syncRequest(peerNode, 1, 4),
		syncEnd(7, 1), fx.snapshotDatagram(f, 7, 1, "snap"), cookie(wire.KindCookie), cookie(wire.KindCookieEcho),
		fx.fragmentDatagram(f, 2, "frag", 1, 0), fx.fragmentDatagram(f, 3, "half", 0), fx.fragmentDatagram(f, 4, "twic", 1, 1),
	} {
		f.Add(append([]byte{byte(len(d))}, d...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fx := newReceiverFixture(t)
		now := time.Now()
		fx.handleAt(now, peerA, announce(t, peerNode, 1, 0))
		for seq := uint64(1); len(in) > 0; seq++ {
			n := min(int(in[0]), len(in)-1)
			d := in[1 : 1+n]
			in = in[1+n:]
			fx.handleAt(now, peerA, d)
			fx.handleAt(now, peerB, d)
			now = now.Add(30 * time.Millisecond)
			fx.n.dispatch.onTimers(now, nil)
		}
		for _, tg := range []*fakeTarget{fx.flows, fx.nat} {
			for _, c := range tg.calls {
				if len(c.keys)%tg.keySize != 0 || c.op == ops.Update && len(c.vals) != len(c.keys)/tg.keySize*tg.valueSize {
					t.Fatalf("a write of the wrong size: %d key bytes, %d value bytes, for %d and %d",
						len(c.keys), len(c.vals), tg.keySize, tg.valueSize)
				}
			}
		}
	})
}
