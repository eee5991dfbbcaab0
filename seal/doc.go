// Package seal authenticates and encrypts udpmapsync datagrams with a
// pre-shared key, and tells replayed ones from new ones.
//
// A sealed datagram is the plain datagram, header then body, with the body
// encrypted in place and a trailer appended:
//
//	[header: authenticated, in the clear][body: encrypted][counter: 8 bytes, big-endian][tag: 16 bytes]
//
// The header stays readable so that a receiver can tell which node and
// which run sent the datagram before it opens it; the tag covers the
// header, the body and the counter. [Overhead] is the size of the trailer.
//
// # Keys and their rotation
//
// Every node of a cluster holds the same one or two 32-byte keys, in a file
// that [LoadKeyFile] reads: one standard base64 key a line, as
// `head -c 32 /dev/urandom | base64` writes it. The first key seals what
// the node sends; every key in the file opens what it receives. Rotating
// from key OLD to key NEW therefore takes three steps, each completed on
// every node before the next begins:
//
//  1. Add NEW as the second line on every node (OLD, NEW). Nodes still
//     seal with OLD, and all can now open NEW.
//  2. Swap the lines on every node (NEW, OLD). Each node seals with NEW as
//     soon as it has swapped, and the others, holding both keys, open
//     both.
//  3. Remove OLD on every node (NEW).
//
// A node uses its file as it was when the daemon loaded it, at start, so a
// step takes effect on a node when it restarts there. Skipping or
// overlapping steps splits the cluster: a node that has removed OLD no
// longer opens what an unswapped node seals.
//
// # Construction
//
// The cipher is AES-256-GCM. Each sending run, identified by the sender's
// node id and boot epoch, seals with its own subkey:
//
//	subkey = HKDF-SHA256(secret = key, salt = none, info = "udpmapsync v2 datagram" || node (4 bytes) || epoch (8 bytes))
//	nonce  = 4 zero bytes || counter (8 bytes)
//
// with integers big-endian, where the counter counts every datagram of
// every kind the run sends, from 1. The counter is the GCM nonce, so the
// tag authenticates it with the rest.
//
// A nonce never repeats under a key, which GCM needs: within a run the
// counter strictly grows, from an atomic counter that is never reset and
// that fails with [ErrCounterExhausted] rather than wrap past 2^64-1;
// distinct runs use distinct subkeys, since HKDF gives independent keys
// for distinct (node, epoch) infos, and a node's epoch strictly grows
// across its restarts (package epoch keeps it in a file and never goes
// back, even when the clock does). That holds as long as node ids are
// unique among the nodes sharing a key, a run creates one [Sealer], and a
// new Sealer, say after loading a new key, gets a new epoch.
//
// AES-256-GCM rather than ChaCha20-Poly1305, because it was measured
// faster on the machine udpmapsync is developed on (Intel Xeon with
// AES-NI, Go 1.26, 1400-byte datagrams, median of 5 runs):
//
//	                   seal                open
//	AES-256-GCM         580 ns  2420 MB/s   530 ns  2640 MB/s
//	ChaCha20-Poly1305  1330 ns  1050 MB/s  1490 ns   940 MB/s
//
// ChaCha20-Poly1305 would win only on processors without AES instructions,
// which x86-64 and arm64 servers have had for a decade. The comparison
// is not kept as a benchmark, since it would make golang.org/x/crypto a
// dependency for a test alone; BenchmarkSeal1400 and BenchmarkOpen1400
// time what the package does.
//
// # Costs
//
// [Sealer.Seal] and [Opener.Open] work in the caller's buffer and allocate
// nothing: AES-256-GCM of the body plus a few tens of nanoseconds. An
// [Opener] caches the subkeys of the 64 runs it opened most recently,
// about 1 KiB each. A datagram naming a run not in the cache costs, for
// each key tried, one HKDF (its Extract half is done once, when the keys
// are loaded), one AES key schedule and 13 allocations (2 KiB): about 4µs
// here (BenchmarkOpenForgedRun). The run enters the cache only if the
// datagram opens: forged datagrams naming made-up runs cost that CPU each but grow
// no memory and evict no peer's run. A receiver can spare itself most of
// that cost by dropping, before Open, datagrams of a node's epochs older
// than the latest that opened.
//
// # Replays
//
// A [ReplayWindow] per run, fed the counters of the datagrams that opened,
// drops replays and datagrams more than [WindowSize] counters old. A
// resend is a new datagram, sealed again with a new counter.
package seal
