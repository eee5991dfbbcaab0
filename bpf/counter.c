//go:build ignore

/*
 * counter.c: adds peers' contributions to a merge=sum map's counters
 * without losing the datapath's concurrent increments (see "Counters" in
 * docs/ARCHITECTURE.md). A read-modify-write from user space loses every
 * increment made between its read and its write; this program adds each
 * word with an atomic add through the pointer bpf_map_lookup_elem
 * returns, as the datapath's own CPUs do.
 *
 * It is a BPF_PROG_TYPE_SYSCALL program, run with BPF_PROG_RUN on a batch:
 * the context (struct counter_args) points at the batch's keys and delta
 * vectors in the caller's memory, which the program reads with
 * bpf_copy_from_user (syscall programs are sleepable). The loader loads
 * one per map, with that map in place of target (or target_percpu) and
 * key_size and words set to its sizes.
 */

#include "kernel.h"
#include <bpf/bpf_helpers.h>

/* The largest key and value the program handles (its scratch space). */
#define COUNTER_MAX_KEY 512
#define COUNTER_MAX_WORDS 64

/* ABI numbers kernel.h has no use for. */
#define COUNTER_MAP_TYPE_PERCPU_HASH 5
#define COUNTER_NOEXIST 1
#define COUNTER_EEXIST 17

/* Set by the loader before the load: the map's key size, and its value
 * size in 64-bit words. */
volatile const __u32 key_size = 4;
volatile const __u32 words = 1;

/* The context: count keys back to back at keys, and count vectors of
 * words 64-bit deltas back to back at deltas, both in the caller's
 * memory. */
struct counter_args {
	__u64 keys;
	__u64 deltas;
	__u32 count;
	__u32 pad;
};

/* For bpf2go's -type: a type only used through casts is not in the BTF. */
const struct counter_args *unused_counter_args __attribute__((unused));

/* Placeholders: the loader replaces the one its program uses with the
 * map to add to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} target SEC(".maps");

struct {
	__uint(type, COUNTER_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} target_percpu SEC(".maps");

/* One entry's key and deltas, copied from the caller. One per CPU: the
 * program runs with migration disabled, and the loader never runs one
 * map's program twice at once. */
struct scratch {
	__u8 key[COUNTER_MAX_KEY];
	__u64 delta[COUNTER_MAX_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* A batch's run: what bpf_loop hands each entry, and what failed. */
struct run {
	__u64 keys, deltas;
	__u32 failed;
};

/* fetch copies entry i's key and deltas into the scratch space. */
static __always_inline struct scratch *fetch(struct run *r, __u32 i)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	__u32 ks = key_size, vs = words * 8;

	if (!s || ks == 0 || ks > COUNTER_MAX_KEY || vs == 0 || vs > sizeof(s->delta))
		return NULL;
	if (bpf_copy_from_user(s->key, ks, (void *)(r->keys + (__u64)i * ks)))
		return NULL;
	if (bpf_copy_from_user(s->delta, vs, (void *)(r->deltas + (__u64)i * vs)))
		return NULL;
	return s;
}

/* add adds s's deltas to the value v points at, word by word. */
static __always_inline void add(__u64 *v, struct scratch *s)
{
	for (__u32 w = 0; w < COUNTER_MAX_WORDS && w < words; w++)
		__sync_fetch_and_add(&v[w], s->delta[w]);
}

static long add_one(__u32 i, void *data)
{
	struct run *r = data;
	struct scratch *s = fetch(r, i);
	__u64 *v;
	long err;

	if (!s) {
		r->failed++;
		return 0;
	}
	v = bpf_map_lookup_elem(&target, s->key);
	if (!v) {
		/* A new key holds the deltas; if the datapath created it
		 * meanwhile, add to what it holds. */
		err = bpf_map_update_elem(&target, s->key, s->delta, COUNTER_NOEXIST);
		if (err == 0)
			return 0;
		v = err == -COUNTER_EEXIST ? bpf_map_lookup_elem(&target, s->key) : NULL;
		if (!v) {
			r->failed++;
			return 0;
		}
	}
	add(v, s);
	return 0;
}

/* add_deltas adds a batch of delta vectors to target's values, creating
 * the keys it does not hold. It returns how many entries failed (a key it
 * could neither find nor create: a full map). */
SEC("syscall")
int add_deltas(struct counter_args *ctx)
{
	struct run r = {.keys = ctx->keys, .deltas = ctx->deltas};

	bpf_loop(ctx->count, add_one, &r, 0);
	return r.failed;
}

static long add_one_percpu(__u32 i, void *data)
{
	struct run *r = data;
	struct scratch *s = fetch(r, i);
	__u64 *v;
	long err;

	if (!s) {
		r->failed++;
		return 0;
	}
	/* Into the slot of the CPU this runs on: what the node reads is the
	 * sum over its CPUs. A per-CPU datapath writes its CPU's slot without
	 * atomics, and it runs in softirq: on this CPU it never stops half
	 * way through its read-modify-write to let this program in, and this
	 * program's add is one instruction it cannot split. Another CPU's
	 * slot (bpf_map_lookup_percpu_elem) would race with its datapath. */
	v = bpf_map_lookup_elem(&target_percpu, s->key);
	if (!v) {
		/* An update from a program writes this CPU's slot and zeroes
		 * the others' in a new element. */
		err = bpf_map_update_elem(&target_percpu, s->key, s->delta, COUNTER_NOEXIST);
		if (err == 0)
			return 0;
		v = err == -COUNTER_EEXIST ? bpf_map_lookup_elem(&target_percpu, s->key) : NULL;
		if (!v) {
			r->failed++;
			return 0;
		}
	}
	add(v, s);
	return 0;
}

/* add_deltas_percpu is add_deltas for per-CPU maps. */
SEC("syscall")
int add_deltas_percpu(struct counter_args *ctx)
{
	struct run r = {.keys = ctx->keys, .deltas = ctx->deltas};

	bpf_loop(ctx->count, add_one_percpu, &r, 0);
	return r.failed;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
