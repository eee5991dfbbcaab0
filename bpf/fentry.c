//go:build ignore

/*
 * fentry.c: the "fentry" capture backend. fexit programs on the map
 * implementations see every successful write, whoever makes it: bpf(2)
 * callers, batch commands (which call the per-element functions) and BPF
 * programs (whose helper calls are rewritten into direct calls to the same
 * functions). fexit rather than fentry because the return value tells which
 * writes took effect.
 */

#define CAPTURE_SLOTS 9
#include "capture.h"

/*
 * own_write reports whether the current task is the daemon writing map
 * through bpf(2). The syscall check matters here, unlike in the syscall
 * backend: a BPF program can write from an interrupt or from the daemon's
 * own send path while the daemon is current, and that write must be sent.
 */
static __always_inline bool own_write(struct bpf_map *map)
{
	struct pt_regs *regs;

	if (!own_process())
		return false;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs || syscall_nr(regs) != NR_BPF)
		return false;
	return attr_map(syscall_arg0(regs), syscall_arg1(regs)) == map;
}

static __always_inline void element(__u32 slot, struct bpf_map *map, __u8 op, const void *key,
				    const void *value, int ret)
{
	__u32 id;

	if (ret)
		return;
	id = watched_map(map);
	if (!id || own_write(map))
		return;
	emit(slot, id, op, BPF_CORE_READ(map, key_size), BPF_CORE_READ(map, value_size), key,
	     value, false);
}

/*
 * The batch lookup-and-delete removes elements without calling the
 * per-element functions; its deleted keys are read from the caller's
 * buffer, as the syscall backend does.
 */
static __always_inline void lookup_and_delete_batch(__u32 slot, struct bpf_map *map,
						    void *uattr, int ret)
{
	__u32 id = watched_map(map);

	if (!id || own_write(map))
		return;
	emit_user_batch(slot, map, id, CAPTURE_OP_DELETE, (__u64)uattr, ret);
}

SEC("fexit/htab_map_update_elem")
int BPF_PROG(fexit_htab_update, struct bpf_map *map, void *key, void *value, __u64 flags, int ret)
{
	element(0, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/htab_lru_map_update_elem")
int BPF_PROG(fexit_htab_lru_update, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(1, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/array_map_update_elem")
int BPF_PROG(fexit_array_update, struct bpf_map *map, void *key, void *value, __u64 flags, int ret)
{
	element(2, map, CAPTURE_OP_UPDATE, key, value, ret);
	return 0;
}

SEC("fexit/htab_map_delete_elem")
int BPF_PROG(fexit_htab_delete, struct bpf_map *map, void *key, int ret)
{
	element(3, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_map_delete_elem")
int BPF_PROG(fexit_htab_lru_delete, struct bpf_map *map, void *key, int ret)
{
	element(4, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_lookup_delete, struct bpf_map *map, void *key, void *value, __u64 flags,
	     int ret)
{
	element(5, map, CAPTURE_OP_DELETE, key, NULL, ret);
	return 0;
}

SEC("fexit/htab_lru_map_lookup_and_delete_elem")
int BPF_PROG(fexit_htab_lru_lookup_delete, struct bpf_map *map, void *key, void *value,
	     __u64 flags, int ret)
{
	element(6, map, CAPTURE_OP_DELETE, key, NULL, ret);
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
