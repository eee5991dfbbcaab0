//go:build ignore

/*
 * datapath.c: a conntrack-like datapath for the in-place tests, run with
 * BPF_PROG_TEST_RUN. Like Cilium's and LoxiLB's, it creates no entries:
 * it finds them with bpf_map_lookup_elem and writes them in place,
 * through the pointer, where no update hook sees it. Each program takes
 * its arguments from the start of the test packet (struct args).
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_FLOWS 4096
#define LOCKED_WORDS 16

/* A Cilium-like conntrack value (bpf/lib/conntrack.h keeps more). */
struct ct_entry {
	__u64 packets;       /* bumped in place on every packet */
	__u64 bytes;
	__u64 expires;       /* bpf_ktime_get_ns() + timeout: a mono-ns clock */
	__u32 lifetime;      /* seconds of bpf_ktime_get_ns() + timeout: mono-s, as bpf_mono_now() */
	__u16 rev_nat_index;
	__u8 flags;
	__u8 pad;
	__u32 ifindex;       /* this node's own: a local field */
	__u32 pad2;
};

/* A LoxiLB-like value: the datapath holds the lock while it writes. */
struct locked_entry {
	struct bpf_spin_lock lock;
	__u32 state;
	__u64 lts;                 /* bpf_ktime_get_ns() of the last write */
	__u64 words[LOCKED_WORDS]; /* all equal, unless torn */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct ct_entry);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct ct_entry);
} lru_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct locked_entry);
} locked SEC(".maps");

struct args {
	__u32 first;      /* first key */
	__u32 count;      /* keys from first on */
	__u64 timeout_ns; /* for refresh */
	__u32 timeout_s;
	__u32 bytes;      /* added per packet */
	__u32 limit;      /* for limit: the packets a client may send */
	__u32 repeat;     /* for count: packets per client */
};

/* For bpf2go's -type: a type only used through casts is not in the BTF. */
const struct args *unused_args __attribute__((unused));

static __always_inline struct args *get_args(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct args *a = data;

	if ((void *)(a + 1) > end)
		return 0;
	return a;
}

/* Each program runs its callback once per key with bpf_loop: a plain
 * loop over thousands of keys is too much for the verifier. */
struct loop {
	struct args a;
	__u64 now;
};

static long refresh_one(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i;
	struct ct_entry *e = bpf_map_lookup_elem(&flows, &key);

	if (!e)
		return 0;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, l->a.bytes);
	e->expires = l->now + l->a.timeout_ns;
	e->lifetime = l->now / 1000000000 + l->a.timeout_s;
	return 0;
}

/* for_each runs fn on each of the packet's keys, with the time now. */
static __always_inline int for_each(struct xdp_md *ctx, void *fn)
{
	struct args *a = get_args(ctx);
	struct loop l;

	if (!a)
		return XDP_ABORTED;
	l.a = *a;
	l.now = bpf_ktime_get_ns();
	bpf_loop(a->count, fn, &l, 0);
	return XDP_PASS;
}

/* refresh plays one packet on each of count flows: counters up, lifetimes
 * moved to now + timeout, as Cilium's __ct_update_timeout() does. */
SEC("xdp")
int refresh(struct xdp_md *ctx)
{
	return for_each(ctx, refresh_one);
}

static long insert_one(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i;
	struct ct_entry zero = {};

	bpf_map_update_elem(&lru_flows, &key, &zero, BPF_ANY);
	return 0;
}

static long delete_one(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i;

	bpf_map_delete_elem(&lru_flows, &key);
	return 0;
}

/* churn inserts count keys from first into lru_flows, which evicts
 * others when full, and deletes them again: what is left is the
 * evictions, which no update or delete hook sees. */
SEC("xdp")
int churn(struct xdp_md *ctx)
{
	struct args *a = get_args(ctx);
	struct loop l = {};

	if (!a)
		return XDP_ABORTED;
	l.a = *a;
	bpf_loop(a->count, insert_one, &l, 0);
	bpf_loop(a->count, delete_one, &l, 0);
	return XDP_PASS;
}

static long bump_one(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i;
	struct locked_entry *e = bpf_map_lookup_elem(&locked, &key);
	__u64 n;

	if (!e)
		return 0;
	bpf_spin_lock(&e->lock);
	n = e->words[0] + 1;
#pragma unroll
	for (int j = 0; j < LOCKED_WORDS; j++)
		e->words[j] = n;
	e->lts = l->now;
	e->state = 1;
	bpf_spin_unlock(&e->lock);
	return 0;
}

/* bump writes every word of count locked entries under their lock, with
 * one new value: a reader that does not take the lock may see a mix. */
SEC("xdp")
int bump(struct xdp_md *ctx)
{
	return for_each(ctx, bump_one);
}

/* A rate limiter's counters, per client: what a merge=sum map holds. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct counter);
} counters_percpu SEC(".maps");

/* counter_of finds client key's counters in m, creating them at zero. */
static __always_inline struct counter *counter_of(void *m, __u32 *key)
{
	struct counter zero = {};
	struct counter *c = bpf_map_lookup_elem(m, key);

	if (c)
		return c;
	bpf_map_update_elem(m, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(m, key);
}

/* for_each_packet runs fn repeat times on each of the packet's keys: a
 * run of BPF_PROG_TEST_RUN with a repeat count is run again whole when a
 * signal interrupts it, which would count some packets twice. */
static __always_inline int for_each_packet(struct xdp_md *ctx, void *fn)
{
	struct args *a = get_args(ctx);
	struct loop l;

	if (!a || a->count == 0)
		return XDP_ABORTED;
	l.a = *a;
	bpf_loop(a->count * a->repeat, fn, &l, 0);
	return XDP_PASS;
}

static long count_one(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i % l->a.count;
	struct counter *c = counter_of(&counters, &key);

	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, l->a.bytes);
	}
	return 0;
}

/* count counts repeat packets of the given bytes for each of count
 * clients, in place, as xdp-tools' DNS rate limiter does. */
SEC("xdp")
int count(struct xdp_md *ctx)
{
	return for_each_packet(ctx, count_one);
}

static long count_one_percpu(__u32 i, void *data)
{
	struct loop *l = data;
	__u32 key = l->a.first + i % l->a.count;
	struct counter *c = counter_of(&counters_percpu, &key);

	if (c) {
		c->packets++; /* this CPU's own slot: no other CPU writes it */
		c->bytes += l->a.bytes;
	}
	return 0;
}

/* count_percpu is count on the per-CPU map, in this CPU's slot. */
SEC("xdp")
int count_percpu(struct xdp_md *ctx)
{
	return for_each_packet(ctx, count_one_percpu);
}

/* limit is a rate limiter for client first: it counts the packet and
 * passes it while the client's count, the packet included, is at most
 * limit; otherwise it drops it. */
SEC("xdp")
int limit(struct xdp_md *ctx)
{
	struct args *a = get_args(ctx);
	struct counter *c;
	__u32 key;

	if (!a)
		return XDP_ABORTED;
	key = a->first;
	c = counter_of(&counters, &key);
	if (!c)
		return XDP_ABORTED;
	if (__sync_fetch_and_add(&c->packets, 1) + 1 > a->limit)
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
