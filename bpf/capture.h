/* SPDX-License-Identifier: GPL-2.0 */
/*
 * capture.h: what both capture backends (fentry.c, syscall.c) share: the
 * ring-buffer sample, the maps and settings the loader fills in, the
 * filters, and the code that turns changes into samples.
 *
 * A backend includes this after defining CAPTURE_SLOTS, the number of its
 * programs; each program passes its own slot number to the emit functions.
 */
#pragma once

#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define CAPTURE_MAX_KEY 512
#define CAPTURE_MAX_VALUE 16383

/*
 * A sample is assembled in a scratch buffer whose data holds a key region
 * (all the keys of the sample, at its start) and then a value region (all
 * the values, right after the keys). Their lengths are kept below these
 * masks, which the verifier needs: see emit. A batch is cut into chunks of
 * as many elements as fit both regions, one sample each; the largest
 * element must fit a chunk of its own.
 */
#define CAPTURE_KEYS_MASK 8191
#define CAPTURE_VALUES_MASK 16383
_Static_assert(CAPTURE_KEYS_MASK >= CAPTURE_MAX_KEY, "key region below the key limit");
_Static_assert(CAPTURE_VALUES_MASK >= CAPTURE_MAX_VALUE, "value region below the value limit");

#define CAPTURE_OP_UPDATE 1
#define CAPTURE_OP_DELETE 2
/*
 * An update a BPF program made to one CPU's slot of a per-CPU value: a
 * sample of keys only (value_size 0). The loader reads the whole value,
 * every CPU's slot, from the map. Ring samples only; never on the wire.
 */
#define CAPTURE_OP_TOUCH 3

/* bpf_loop refuses more iterations than this. */
#define CAPTURE_MAX_LOOP (1 << 23)


/*
 * change is the header of one ring sample, in the machine's byte order: a
 * run of count (at least 1) changes of one map with one op, in the order
 * they were made. count keys of key_size bytes follow the header back to
 * back, then count values of value_size bytes back to back; value_size is 0
 * for deletes. The sample is exactly sizeof(struct change) + count *
 * (key_size + value_size) long. loader/capture.go mirrors this layout.
 */
struct change {
	__u32 map_id;
	__u8 op;
	__u8 pad;
	__u16 key_size;
	__u32 value_size;
	__u32 count;
};
_Static_assert(sizeof(struct change) == 16, "sample header not 16 bytes");

/*
 * record is a sample being assembled: its length depends on the changes,
 * and bpf_ringbuf_reserve only takes constant sizes, so it is built here
 * and copied with bpf_ringbuf_output, which takes a bounded length.
 */
struct record {
	struct change hdr;
	__u8 data[CAPTURE_KEYS_MASK + 1 + CAPTURE_VALUES_MASK + 1];
};
/* The kernel's limit for the values of per-CPU arrays (PCPU_MIN_UNIT_SIZE). */
_Static_assert(sizeof(struct record) <= 32768, "record too large for a per-CPU array");

/* Sized by the loader (CaptureOptions.RingSize). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} ring SEC(".maps");

/*
 * Map ids to report, each with the length of one of its values as bpf(2)
 * passes it: the value size, or for a per-CPU map one slot per possible
 * CPU, each rounded up to 8 bytes (loader.Map.ValueLen). Filled by the
 * loader; never 0 for a map it fills in.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

/*
 * One record buffer per program and CPU. A program never runs twice at once
 * on one CPU (the kernel skips a nested run and counts it as a recursion
 * miss), but an interrupt can run a different program on the same CPU in
 * the middle of another, so programs do not share a buffer.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAPTURE_SLOTS);
	__type(key, __u32);
	__type(value, struct record);
} scratch SEC(".maps");

/*
 * The daemon's own process: its writes are the changes it applies for its
 * peers and must not be sent back. Identified by pid namespace (device and
 * inode of /proc/self/ns/pid) and the tgid inside it, so it is right when
 * the daemon runs in a PID namespace.
 */
volatile const __u64 self_pidns_dev;
volatile const __u64 self_pidns_ino;
volatile const __u32 self_tgid;

/* Queue length in bytes from which every sample wakes the reader. */
volatile const __u64 wake_bytes = 1 << 21;

/*
 * Changes that were made but could not be queued: ring full, or their bytes
 * could not be read. The loader reads it.
 */
__u64 overflows;

/*
 * reader_waiting is 1 when the reader may be waiting for a wake-up: the
 * loader sets it, through a shared mapping, before each read that may wait
 * longer than loader.IdleWake (loader.Capture.Read); the first sample
 * queued after that clears it and wakes the reader. See wake_reader.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
} reader_waiting SEC(".maps");

static __always_inline void lost(__u64 n)
{
	__sync_fetch_and_add(&overflows, n);
}

/*
 * wake_reader wakes the reader if it said it may be waiting, after a sample
 * was queued. Samples go in silently otherwise (a wake-up costs more than
 * the write itself) and are collected in bulk, or wake the reader when
 * wake_bytes are queued; no clock is read (in a VM without a usable TSC a
 * clock read costs several times a map write).
 *
 * Why a silent sample cannot be stranded. A read that may wait long first
 * sets reader_waiting, then looks at the ring, then waits. A sample's
 * commit (an xchg in the kernel, a full barrier) comes before this load of
 * reader_waiting, and the reader's store comes before its look at the ring
 * (a sequentially consistent atomic store in Go): so either the reader sees
 * the sample, or this load sees the flag and the sample's program wakes the
 * reader, whether it is in epoll_wait already or about to enter it (the
 * ring polls readable until drained). Whoever clears the flag wakes the
 * reader after clearing it, so a read that set it again in between is
 * woken too, by that wake-up. The wake-up is a discarded record's, which
 * the reader skips: the helpers wake only on a commit. A read with a
 * nearer deadline does not set the flag and collects what was queued
 * silently when the deadline passes.
 */
static __always_inline void wake_reader(void)
{
	__u32 zero = 0;
	__u32 *waiting = bpf_map_lookup_elem(&reader_waiting, &zero);
	void *w;

	if (!waiting || !*(volatile __u32 *)waiting)
		return;
	*(volatile __u32 *)waiting = 0;
	w = bpf_ringbuf_reserve(&ring, 8, 0);
	if (!w) {
		/*
		 * The ring is full: the samples that filled it woke the reader
		 * (wake_bytes). The next sample tries again anyway.
		 */
		*(volatile __u32 *)waiting = 1;
		return;
	}
	bpf_ringbuf_discard(w, BPF_RB_FORCE_WAKEUP);
}

/* set_header describes the sample being assembled in rec. */
static __always_inline void set_header(struct record *rec, __u32 map_id, __u8 op, __u64 key_size,
				       __u64 value_size, __u32 count)
{
	rec->hdr.map_id = map_id;
	rec->hdr.op = op;
	rec->hdr.pad = 0;
	rec->hdr.key_size = key_size;
	rec->hdr.value_size = value_size;
	rec->hdr.count = count;
}

/*
 * output queues the sample in rec: count changes whose keys fill keys_len
 * bytes of its data and whose values the values_len bytes after them.
 */
static __always_inline void output(struct record *rec, __u64 keys_len, __u64 values_len,
				   __u32 count)
{
	__u64 size, flags = BPF_RB_NO_WAKEUP;

	/* The callers' lengths are within the masks; see emit. */
	barrier_var(keys_len);
	barrier_var(values_len);
	size = sizeof(rec->hdr) + (keys_len & CAPTURE_KEYS_MASK) +
	       (values_len & CAPTURE_VALUES_MASK);
	if (bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA) + size >= wake_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&ring, rec, size, flags)) {
		lost(count);
		return;
	}
	wake_reader();
}

/*
 * emit queues one change as a sample of its own. key and value point to
 * user memory when user is set (the bpf(2) caller's buffers), to kernel
 * memory otherwise; value is only read for updates (value_size bytes, the
 * map's watched_len). Sizes over the limits
 * cannot occur for maps the loader accepts; they are clamped out by
 * dropping and counting the change rather than sending a truncated one.
 */
static __always_inline void emit(__u32 slot, __u32 map_id, __u8 op, __u64 key_size,
				 __u64 value_size, const void *key, const void *value,
				 bool user)
{
	struct record *rec;
	long err;

	rec = bpf_map_lookup_elem(&scratch, &slot);
	if (!rec) {
		lost(1);
		return;
	}
	if (op != CAPTURE_OP_UPDATE)
		value_size = 0;
	if (key_size > CAPTURE_MAX_KEY || value_size > CAPTURE_MAX_VALUE) {
		lost(1);
		return;
	}
	/*
	 * Older verifiers (Linux 6.1) lose the bounds checked above when the
	 * compiler spills a size to the stack and reloads it; they never lose
	 * those of a mask. barrier_var keeps the compiler from dropping masks
	 * it can prove change nothing.
	 */
	barrier_var(key_size);
	barrier_var(value_size);
	key_size &= CAPTURE_KEYS_MASK;
	value_size &= CAPTURE_VALUES_MASK;

	set_header(rec, map_id, op, key_size, value_size, 1);
	if (user)
		err = bpf_probe_read_user(rec->data, key_size, key);
	else
		err = bpf_probe_read_kernel(rec->data, key_size, key);
	if (!err && value_size) {
		if (user)
			err = bpf_probe_read_user(rec->data + key_size, value_size, value);
		else
			err = bpf_probe_read_kernel(rec->data + key_size, value_size, value);
	}
	if (err) {
		lost(1);
		return;
	}
	output(rec, key_size, value_size, 1);
}

/* own_process reports whether the current task belongs to the daemon. */
static __always_inline bool own_process(void)
{
	struct bpf_pidns_info ns;

	if (bpf_get_ns_current_pid_tgid(self_pidns_dev, self_pidns_ino, &ns, sizeof(ns)))
		return false;
	return ns.tgid == self_tgid;
}

/*
 * watched_len returns the length of a value of the map of that id as
 * bpf(2) passes it (see watched) if the map is reported, else 0.
 */
static __always_inline __u32 watched_len(__u32 id)
{
	__u32 *len = bpf_map_lookup_elem(&watched, &id);

	return len ? *len : 0;
}

/* fd_map returns the map behind file descriptor fd of the current task. */
static __always_inline struct bpf_map *fd_map(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	return BPF_CORE_READ(f, private_data);
}

static __always_inline bool is_batch(__u64 cmd)
{
	return cmd == BPF_MAP_UPDATE_BATCH || cmd == BPF_MAP_DELETE_BATCH ||
	       cmd == BPF_MAP_LOOKUP_AND_DELETE_BATCH;
}

/*
 * attr_map returns the map a bpf(2) map command with user attribute uattr
 * names, or NULL when cmd is not one of the commands captured here.
 */
static __always_inline struct bpf_map *attr_map(__u64 cmd, __u64 uattr)
{
	__u32 fd;
	long off;

	switch (cmd) {
	case BPF_MAP_UPDATE_ELEM:
	case BPF_MAP_DELETE_ELEM:
	case BPF_MAP_LOOKUP_AND_DELETE_ELEM:
		off = __builtin_offsetof(struct bpf_attr_elem, map_fd);
		break;
	case BPF_MAP_UPDATE_BATCH:
	case BPF_MAP_DELETE_BATCH:
	case BPF_MAP_LOOKUP_AND_DELETE_BATCH:
		off = __builtin_offsetof(struct bpf_attr_batch, map_fd);
		break;
	default:
		return NULL;
	}
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(uattr + off)))
		return NULL;
	return fd_map(fd);
}

/*
 * batch_done returns how many elements of a finished batch command took
 * effect, from its return value and the count the kernel wrote back into
 * the user's attr.batch.count. The kernel sets that count to 0 before
 * touching the map and then to the number of elements processed, also when
 * an element fails (Linux 6.7 and stable kernels; the batch lookup-and-
 * delete of hash maps always did). The errors below are the ones returned
 * before that reset, when the count still holds the caller's request: no
 * element was touched. Cost of the rule: a batch whose key buffer faults
 * midway (EFAULT) is not reported at all.
 */
static __always_inline __u32 batch_done(long ret, __u32 count)
{
	switch (-ret) {
	case EPERM:
	case EBADF:
	case EFAULT:
	case EINVAL:
	case EOPNOTSUPP:
	case ENOTSUPP:
		return 0;
	}
	return count;
}

/* What emit_batch_chunk needs for the elements of one batch command. */
struct batch_args {
	__u64 keys;	  /* the caller's keys, back to back */
	__u64 values;	  /* the caller's values, back to back */
	__u64 key_size;
	__u64 value_size; /* 0 for deletes */
	__u64 count;	  /* elements to report */
	__u64 per_chunk;  /* elements per sample, at least 1 */
	__u32 map_id;
	__u8 op;
};

/*
 * The arguments reach the bpf_loop callback through a map, not the
 * caller's stack. Linux 6.1 verifies a callback once, with one caller
 * state: seeing op constant on the stack, it could verify only the update
 * path (or only the delete path) and then remove the other as dead code.
 * Values loaded from a map are unknown to it, so every path is kept.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CAPTURE_SLOTS);
	__type(key, __u32);
	__type(value, struct batch_args);
} batch_args SEC(".maps");

/*
 * emit_batch_chunk queues chunk i of a batch as one sample: its keys with
 * one read of the caller's keys, which are back to back, and its values
 * with one read. Elements that cannot be read or queued are counted lost,
 * and the next chunk is still tried, as single changes are.
 */
static long emit_batch_chunk(__u32 i, __u32 *slot)
{
	struct batch_args *a = bpf_map_lookup_elem(&batch_args, slot);
	__u64 first, n, key_size, value_size, keys_len, values_len;
	struct record *rec;
	long err;

	if (!a)
		return 1;
	first = (__u64)i * a->per_chunk;
	if (first >= a->count)
		return 1;
	n = a->count - first;
	if (n > a->per_chunk)
		n = a->per_chunk;
	rec = bpf_map_lookup_elem(&scratch, slot);
	if (!rec) {
		lost(n);
		return 0;
	}
	key_size = a->key_size;
	value_size = a->value_size;
	keys_len = n * key_size;
	values_len = n * value_size;
	/* emit_user_batch sized the chunks for this; see emit for the masks. */
	if (keys_len > CAPTURE_KEYS_MASK || values_len > CAPTURE_VALUES_MASK) {
		lost(n);
		return 0;
	}
	barrier_var(keys_len);
	barrier_var(values_len);
	keys_len &= CAPTURE_KEYS_MASK;
	values_len &= CAPTURE_VALUES_MASK;

	set_header(rec, a->map_id, a->op, key_size, value_size, n);
	err = bpf_probe_read_user(rec->data, keys_len, (const void *)(a->keys + first * key_size));
	if (!err && values_len)
		err = bpf_probe_read_user(rec->data + keys_len, values_len,
					  (const void *)(a->values + first * value_size));
	if (err) {
		lost(n);
		return 0;
	}
	output(rec, keys_len, values_len, n);
	return 0;
}

/*
 * emit_user_batch queues the elements a finished batch command processed,
 * in the order of the caller's buffers, which is the order the kernel
 * applied them (later duplicates win): chunks of as many as fit a sample,
 * one sample each. For a lookup-and-delete batch the keys are the ones the
 * kernel wrote back. value_len is the map's watched_len. done is how many
 * elements took effect when the caller counted them, or -1 to take it from
 * ret and the count written back (see batch_done). A count written back
 * that is larger than done means the caller missed elements: they are
 * counted lost.
 */
static __always_inline void emit_user_batch(__u32 slot, struct bpf_map *map, __u32 map_id,
					    __u32 value_len, __u8 op, __u64 uattr, long ret,
					    __s64 done)
{
	struct bpf_attr_batch attr;
	struct batch_args *a;
	__u64 n, key_size, value_size, per_chunk, chunks;

	if (bpf_probe_read_user(&attr, sizeof(attr), (void *)uattr)) {
		lost(done < 0 ? 1 : done);
		return;
	}
	n = batch_done(ret, attr.count);
	if (done >= 0) {
		if (n > done)
			lost(n - done);
		n = done;
	}
	if (!n)
		return;
	a = bpf_map_lookup_elem(&batch_args, &slot);
	if (!a) {
		lost(n);
		return;
	}
	key_size = BPF_CORE_READ(map, key_size);
	value_size = 0;
	if (op == CAPTURE_OP_UPDATE)
		value_size = value_len;
	/* As in emit; this also keeps the divisions below from being by 0. */
	if (!key_size || key_size > CAPTURE_MAX_KEY || value_size > CAPTURE_MAX_VALUE) {
		lost(n);
		return;
	}
	per_chunk = CAPTURE_KEYS_MASK / key_size;
	if (value_size && CAPTURE_VALUES_MASK / value_size < per_chunk)
		per_chunk = CAPTURE_VALUES_MASK / value_size;
	chunks = (n + per_chunk - 1) / per_chunk;
	if (chunks > CAPTURE_MAX_LOOP) {
		lost(n - CAPTURE_MAX_LOOP * per_chunk);
		n = CAPTURE_MAX_LOOP * per_chunk;
		chunks = CAPTURE_MAX_LOOP;
	}
	a->keys = attr.keys;
	a->values = attr.values;
	a->key_size = key_size;
	a->value_size = value_size;
	a->count = n;
	a->per_chunk = per_chunk;
	a->map_id = map_id;
	a->op = op;
	bpf_loop(chunks, emit_batch_chunk, &slot, 0);
}

char LICENSE[] SEC("license") = "GPL";
