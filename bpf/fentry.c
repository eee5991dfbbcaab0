//go:build ignore

/*
 * fentry.c: the "fentry" capture backend. fexit programs on the map
 * implementations see every successful write, whoever makes it: bpf(2)
 * callers, batch commands (which call the per-element functions) and BPF
 * programs (whose helper calls are rewritten into direct calls to the same
 * functions). fexit rather than fentry because the return value tells which
 * writes took effect.
 *
 * A batch command from user space is not reported element by element: the
 * batch functions mark the task while they run, the element programs skip
 * the elements of a marked batch, and the batch's fexit reads the processed
 * elements from the caller's buffers in chunks, as the syscall backend
 * does (one sample per chunk rather than one per element).
 */

#define CAPTURE_SLOTS 21
#include "capture.h"

/*
 * batch_mark says that a task is inside a batch command (update or delete)
 * of a watched map. frame is the address of the batch function's
 * trampoline frame (its programs' ctx): the element functions the batch
 * calls run on the task's stack below it. A BPF program writing the same
 * map from an interrupt that arrived during the batch runs on the
 * interrupt stack (x86_64 and arm64 switch to it), outside that range, so
 * its write is still reported on its own.
 */
struct batch_mark {
	__u64 map; /* the struct bpf_map, 0 when the task is in no batch */
	__u64 frame;
	__u64 done; /* elements of the batch that took effect so far */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct batch_mark);
} batch_marks SEC(".maps");

/*
 * Batch commands of watched maps running now, so that element programs
 * skip the task storage lookup when there are none (the common case).
 */
__s64 batches_running;

/*
 * in_batch reports whether an element function of map whose fexit got ctx
 * and returned ret was called by a marked batch of this task, and counts
 * the element if it took effect. The task storage lookup fails when it
 * would nest in another one on this CPU, which a batch's element can only
 * meet on a fully preemptible kernel; that element is then reported on its
 * own and missing from its batch's count, which leaves the batch's last
 * element out: batch_exit counts it lost when the count the kernel wrote
 * back shows it.
 */
static __always_inline bool in_batch(struct bpf_map *map, void *ctx, int ret)
{
	struct task_struct *task;
	struct batch_mark *m;
	__u64 frame = (__u64)ctx;

	if (!batches_running)
		return false;
	task = bpf_get_current_task_btf();
	m = bpf_task_storage_get(&batch_marks, task, 0, 0);
	if (!m || m->map != (__u64)map)
		return false;
	if (frame >= m->frame || frame < (__u64)task->stack)
		return false;
	if (!ret)
		m->done++;
	return true;
}

/*
 * own_write reports whether the current task is the daemon writing map
 * through bpf(2). The syscall check matters here, unlike in the syscall
 * backend: a BPF program can write from an interrupt or from the daemon's
 * own send path while the daemon is current, and that write must be sent.
 * It comes first because it is the cheap one for program writes, which
 * mostly run outside bpf(2) or in other commands (BPF_PROG_TEST_RUN).
 */
static __always_inline bool own_write(struct bpf_map *map)
{
	struct pt_regs *regs;

	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs || syscall_nr(regs) != NR_BPF)
		return false;
	return attr_map(syscall_arg0(regs), syscall_arg1(regs)) == map && own_process();
}

/*
 * element reports one write of map made by its element function. map is a
 * BTF pointer: its fields are read directly. An update's value is the whole
 * value as bpf(2) passes it (for a per-CPU map, every CPU's slot): the
 * updates of one CPU's slot by BPF programs are CAPTURE_OP_TOUCH, which
 * carry no value.
 */
static __always_inline void element(void *ctx, __u32 slot, struct bpf_map *map, __u8 op,
				    const void *key, const void *value, int ret)
{
	__u32 len;

	/* Only watched maps are marked: a batch's element needs no lookup. */
	if (in_batch(map, ctx, ret) || ret)
		return;
	len = watched_len(map->id);
	if (!len || own_write(map))
		return;
	emit(slot, map->id, op, map->key_size, len, key, value, false);
}

/*
 * The batch lookup-and-delete removes elements without calling the
 * per-element functions; its deleted keys are read from the caller's
 * buffer, as the syscall backend does.
 */
static __always_inline void lookup_and_delete_batch(__u32 slot, struct bpf_map *map,
						    void *uattr, int ret)
{
	__u32 len = watched_len(map->id);

	if (!len || own_write(map))
		return;
	emit_user_batch(slot, map, map->id, len, CAPTURE_OP_DELETE, (__u64)uattr, ret, -1);
}

SEC("fexit/htab_map_update_elem")
int BPF_PROG(fexit_htab_update, struct bpf_map *map, void *key, void *value, __u64 flags, int ret)
{
	element(ctx, 0, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/htab_lru_map_update_elem")
int BPF_PROG(fexit_htab_lru_update, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(ctx, 1, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

/*
 * Per-CPU arrays share this function: bpf(2) writes them through
 * bpf_percpu_array_update, so here a per-CPU array is written by a BPF
 * program, in the current CPU's slot only.
 */
SEC("fexit/array_map_update_elem")
int BPF_PROG(fexit_array_update, struct bpf_map *map, void *key, void *value, __u64 flags, int ret)
{
	__u8 op = CAPTURE_OP_UPDATE;

	if (map->map_type == BPF_MAP_TYPE_PERCPU_ARRAY)
		op = CAPTURE_OP_TOUCH;
	element(ctx, 2, map, op, key, value, ret);
	return 0;
}

SEC("fexit/htab_map_delete_elem")
int BPF_PROG(fexit_htab_delete, struct bpf_map *map, void *key, int ret)
{
	element(ctx, 3, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_map_delete_elem")
int BPF_PROG(fexit_htab_lru_delete, struct bpf_map *map, void *key, int ret)
{
	element(ctx, 4, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_lookup_delete, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(ctx, 5, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_lru_lookup_delete, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(ctx, 6, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_map_lookup_and_delete_batch")
int BPF_PROG(fexit_htab_lookup_delete_batch, struct bpf_map *map, void *attr, void *uattr, int ret)
{
	lookup_and_delete_batch(7, map, uattr, ret);
	return 0;
}

SEC("fexit/htab_lru_map_lookup_and_delete_batch")
int BPF_PROG(fexit_htab_lru_lookup_delete_batch, struct bpf_map *map, void *attr, void *uattr,
	     int ret)
{
	lookup_and_delete_batch(8, map, uattr, ret);
	return 0;
}

/*
 * Per-CPU maps. bpf(2) writes a whole value, every CPU's slot, through
 * these two functions (also for each element of a batch update); a BPF
 * program's helper call writes the current CPU's slot only, through the
 * map's own update function.
 */
SEC("fexit/bpf_percpu_hash_update")
int BPF_PROG(fexit_percpu_hash_update, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(ctx, 11, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/bpf_percpu_array_update")
int BPF_PROG(fexit_percpu_array_update, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(ctx, 12, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/htab_percpu_map_update_elem")
int BPF_PROG(fexit_htab_percpu_touch, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(ctx, 13, map, CAPTURE_OP_TOUCH, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_percpu_map_update_elem")
int BPF_PROG(fexit_htab_lru_percpu_touch, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(ctx, 14, map, CAPTURE_OP_TOUCH, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_percpu_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_percpu_lookup_delete, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(ctx, 15, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_percpu_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_lru_percpu_lookup_delete, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(ctx, 16, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_percpu_map_lookup_and_delete_batch")
int BPF_PROG(fexit_htab_percpu_lookup_delete_batch, struct bpf_map *map, void *attr,
	     void *uattr, int ret)
{
	lookup_and_delete_batch(17, map, uattr, ret);
	return 0;
}

SEC("fexit/htab_lru_percpu_map_lookup_and_delete_batch")
int BPF_PROG(fexit_htab_lru_percpu_lookup_delete_batch, struct bpf_map *map, void *attr,
	     void *uattr, int ret)
{
	lookup_and_delete_batch(18, map, uattr, ret);
	return 0;
}

/*
 * LPM tries have no batch commands: bpf(2) and BPF programs alike write
 * them one element at a time through these.
 */
SEC("fexit/trie_update_elem")
int BPF_PROG(fexit_trie_update, struct bpf_map *map, void *key, void *value, __u64 flags, int ret)
{
	element(ctx, 19, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/trie_delete_elem")
int BPF_PROG(fexit_trie_delete, struct bpf_map *map, void *key, int ret)
{
	element(ctx, 20, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

/* batch_enter marks the task as inside a batch command of map. */
static __always_inline void batch_enter(struct bpf_map *map, void *ctx)
{
	struct batch_mark *m;

	if (!watched_len(map->id))
		return;
	m = bpf_task_storage_get(&batch_marks, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!m)
		return; /* its elements are reported one by one */
	m->map = (__u64)map;
	m->frame = (__u64)ctx;
	m->done = 0;
	__sync_fetch_and_add(&batches_running, 1);
}

/*
 * batch_exit reports the elements a marked batch command of map processed,
 * read from the caller's buffers. Only a batch batch_enter marked counts:
 * one that was running when the capture attached was reported element by
 * element. The batch stops at the first element that fails, so the ones
 * that took effect, as in_batch counted them, are the first done of the
 * buffers: exact whatever the kernel writes back into the caller's count
 * and whatever the error. The user attr is the batch function's last
 * argument (Linux 6.3 added one before it), found through a helper rather
 * than a fixed argument list, as is the return value.
 */
static __always_inline void batch_exit(__u32 slot, struct bpf_map *map, __u8 op, void *ctx)
{
	struct batch_mark *m;
	__u64 uattr, ret, done;
	__u32 len = watched_len(map->id);

	if (!len)
		return;
	m = bpf_task_storage_get(&batch_marks, bpf_get_current_task_btf(), 0, 0);
	if (!m || m->map != (__u64)map)
		return;
	m->map = 0;
	done = m->done;
	__sync_fetch_and_add(&batches_running, -1);
	if (own_process())
		return;
	if (bpf_get_func_arg(ctx, bpf_get_func_arg_cnt(ctx) - 1, &uattr) ||
	    bpf_get_func_ret(ctx, &ret)) {
		lost(done);
		return;
	}
	emit_user_batch(slot, map, map->id, len, op, uattr, (int)ret, done);
}

/*
 * The programs of a batch function fn: they mark the task on entry, and
 * report the batch (in scratch slot slot) on exit.
 */
#define BATCH_PROGRAMS(fn, slot, op)                                   \
	SEC("fentry/" #fn)                                             \
	int BPF_PROG(fentry_##fn, struct bpf_map *map)                 \
	{                                                              \
		batch_enter(map, ctx);                                 \
		return 0;                                              \
	}                                                              \
	SEC("fexit/" #fn)                                              \
	int BPF_PROG(fexit_##fn, struct bpf_map *map)                  \
	{                                                              \
		batch_exit(slot, map, op, ctx);                        \
		return 0;                                              \
	}

BATCH_PROGRAMS(generic_map_update_batch, 9, CAPTURE_OP_UPDATE)
BATCH_PROGRAMS(generic_map_delete_batch, 10, CAPTURE_OP_DELETE)
