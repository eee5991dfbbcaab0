package main

// method is the report's "How it was measured" section.
const method = `
**Topology.** netns-test's: one network namespace per node, each with a veth on one Linux bridge
(multicast flooded), a private bpffs per run, the same hash map created with bpftool on every
node. Every run builds a fresh cluster and tears it down. All namespaces share one kernel, one
clock and the machine's 2 cores: the writer, every replicator, the kernel's softirq work for the
bridge and the measuring itself compete for them, so absolute figures are lower than on separate
machines, and a 3-node run has one more process on the same 2 cores.

**Workload.** perf/workload writes on node1 with BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH
(loader.Map.UpdateBatch/DeleteBatch), from a thread of the harness (not a replicator, so every
capture reports it). Updates cycle over changes/2 keys; a share of whole batches delete keys the
map holds. The last change is an update of a sentinel key. Every value starts with the number of
the batch that wrote it and the change's sequence number; the writer records when each batch
syscall started and returned.

**Raw rate.** The same workload into a map with no capture attached and no replicator running,
in the same run, before the replicated runs: the ceiling replication is compared with.

**Throughput.** The writer writes as fast as it can. The harness looks the sentinel up on every
peer every 0.5 ms; the rate is changes / (sentinel held by the last peer − first batch started).
Every replicator here keeps each sender's order (udpmapsync holds datagrams behind a gap until it
is repaired; TCP keeps order), so once the sentinel is there every earlier change has been
applied; the harness then compares every peer's whole map with the state the writer left
(netns-test ReadContents/Compare), for up to the settle time, and counts every missing, extra or
wrong entry as lost.

**Latency.** The writer writes at a fixed rate, one batch per millisecond (10 changes per batch at
10k/s, 100 at 100k/s). On every peer the harness attaches the project's own capture
(loader.NewCapture, woken for every record) to the peer's map: the capture reports writes made by
any process but its own, so it sees the replicator's apply syscalls from the kernel as they
return; the harness reads the batch number from the value and notes the time. Latency = that time
− the start of the batch syscall that wrote the change on node1 (one process, one monotonic
clock). The start, not the return: on 2 cores the writer is often preempted on its way out of
the syscall by the replicator the capture just woke, and would read the clock after the peer
had applied; counting from the start adds the syscall's own time (tens of µs for 100 entries). This does not touch the daemon: no flag, no code path, no extra socket. Its cost is one
more capture program on the machine (a few hundred ns per apply syscall, charged to the applying
process) and the observer's wake-ups, which is why CPU is taken from the throughput runs, where no
observer runs. The time includes the observer's wake-up (tens of µs on a busy 2-core machine), so
it is an upper bound. Deletes carry no value and are not timed. A system whose full-speed rate is
below 1.2× the offered rate is not run at that rate (changes would queue without bound).
During each latency run the harness also reads, every 20 ms, the kernel's run delay of every
thread of the replicators and of its own process (/proc/PID/task/TID/schedstat: time runnable
but not running): the longest any thread waited between two reads, and all their waits summed
per second of the run, are in the latency table. On this shared machine a daemon that waits
200 ms for a core delays every change it holds by as much, with nothing in its counters; these
columns say whether a tail was that. With --keep every sample (peer, batch, its syscall's start
and return, the apply seen) is written to latency.tsv beside the daemons' logs.

**CPU.** utime + stime of each replicator process from /proc/PID/stat (all threads, 10 ms ticks),
from just before the first write to the sentinel's arrival, divided by the changes written. The
capture program itself runs inside the writer's syscalls and is charged to the writer ("writer"
column; compare with the raw CPU per change). The sender's utime alone is kept too (issue 22's
target 2): on veth the kernel's multicast fan-out to every peer runs on the sender's thread, in
its stime, which on a real NIC it would not.

**Sealing.** "udpmapsync" is the daemon started with --insecure-no-key, unsealed as on a trusted
link; "udpmapsync (sealed)" is the same daemon with the same flags and --key-file, as it runs by
default: each
cluster gets a fresh random 32-byte key, written base64 to a mode-0600 file in the run's temporary
directory and given to every node, so every datagram is sealed with AES-256-GCM and every receiver
opens it and checks it against its replay window. It runs right after the plain daemon on the
same node count, with the same workloads. Before measuring, the harness reads datagrams off
node2's interface (a packet socket in its namespace) until it sees one of udpmapsync's, and stops
if it is plain with a key, or sealed without. On a shared machine one pair of ~1 s runs is too
noisy to resolve a 20 % difference, so after the sealed throughput run --sealing-rounds − 1
further pairs run back to back, alternating which goes first; the "Cost of sealing" section
gives, per node count and profile, the medians over all the pairs, and the median and range of
each pair's sealed / plain ratio.

**Wire.** tx_bytes and tx_packets of every node's interface (netlink), summed over the nodes,
over the same window, per change: headers, acknowledgements (TCP), announces and repair requests
included. A veth counts a segmentation-offload message (udpmapsync's UDP GSO, TCP's TSO) as one
packet however many datagrams or segments it carries, so packets here are what crossed the
namespaces, not what a NIC would send; udpmapsync's own counters (changes and bytes per
datagram) are in the notes.

**Memory.** VmHWM from /proc/PID/status at the end of each run. The memory run fills a map of
2^20 entries with 1,000,000 distinct keys through a 2-node cluster, at a rate the daemon sustains,
with the daemon's default ring and resend buffer. Before the first write, a second after the
daemons are ready with their maps empty, it reads their VmHWM too: the idle daemon. Per entry is
(VmHWM at the end − idle VmHWM) / entries, per daemon; the sender's includes its resend buffer
filling up (up to --resend-buffer, whatever the entries).

**Resync and loss.** udpmapsync on 2 nodes, 16 B / 64 B, the throughput runs' workload at full
speed and ring, each run on a fresh cluster. Loss is netns-test's DropDatagrams on node2: an
nftables rule in its namespace dropping that share of the UDP datagrams arriving at the daemons'
port, each at random (numgen), so announces, answers to repair requests and resync datagrams are
lost alike; nothing node2 sends is dropped. Running peers: both daemons running before the first
write, --resync-runs pairs of runs back to back, one without loss and one with it; the runs without
loss give the live stream's time, and their median is what the others are compared with (one
loss-free run on this shared machine can take half again as long as the next). Join under load:
node2's daemon is started (from a thread of the harness) as node1's writer starts, with the loss;
the run lasts until node2's daemon is ready and its map holds every entry of the final state (the
maps are compared once it is ready). Late join: node1's daemon running alone, the writer writes
--join-entries distinct keys at full speed and the harness waits until node1's daemon has been idle
for 250 ms (it has sent what it captured); then node2's daemon starts, and the time counts from
just before its start to the later of its ready file and the first whole-map comparison that
matches, both on node2 (the map is not compared while the daemon starts: reading 1M entries would
compete with it for the cores). The target compares its entries/s with the raw batch-write rate of
the same profile in this run. Fast writer: --fast-runs runs on 2 and on 3 nodes, each on a fresh
cluster without loss, of a writer of --changes distinct keys (nothing coalesces) in batches of
--fast-batch at full speed, faster than a receiver applies them; what counts is whether a
receiver gave a gap up (resync_needed). A run that fails (a daemon that does not start or get ready within
--timeout) is shown as not measured and the others go on.

**gRPC baselines.** perf/cmd/grpcsync, a separate Go module (perf/go.mod) so the daemon never
links gRPC. Same capture (loader.NewCapture, as a replication.Source), same apply
(loader.Map.UpdateBatch/DeleteBatch, as a replication.Target); only the transport differs. Unary:
one call per change, answered before the next, to each peer in turn — the proof of concept's
design, except that it keeps one connection per peer instead of dialling per change. Stream: one
bidirectional stream per peer carrying batches of records (op | key | value, raw bytes, no Any,
no JSON), flushed like udpmapsync's datagrams (capture drained, 64 KiB, or 200 µs), each batch
acknowledged. The service is defined with a hand-written gRPC codec over raw bytes
(encoding.RegisterCodecV2, content subtype "raw") instead of protoc-generated protobuf code:
protoc is in Debian (protobuf-compiler 3.21) but would also need the protoc-gen-go and
protoc-gen-go-grpc plugins and generated code to maintain; raw bytes cost nothing to encode, so
the baselines are measured at their most favourable.

**conntrackd.** perf/conntrackd/run (another engineer's) prints one JSON line, which is shown as
given; see its notes for what it measures (conntrack entries reaching the peer's external cache).

**Go benchmarks.** make bench's benchmarks (go test -bench . -benchmem) of wire, loader and
replication, run by make perf before the scenarios.
`
