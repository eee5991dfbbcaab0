//go:build ignore

/*
 * syscall.c: the "syscall" capture backend, for kernels that refuse
 * fentry/fexit programs. One program on the sys_exit tracepoint watches
 * every bpf(2) call as it returns and reports the map writes that took
 * effect, reading keys and values from the caller's buffers. It cannot see
 * writes made by BPF programs. It runs on every syscall of the machine, so
 * everything but bpf(2) leaves at the first comparison.
 */

#define CAPTURE_SLOTS 1
#include "capture.h"

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_bpf, struct pt_regs *regs, long ret)
{
	struct bpf_attr_elem attr;
	struct bpf_map *map;
	__u64 cmd, uattr;
	__u32 id, len;
	__u8 op;

	if (syscall_nr(regs) != NR_BPF)
		return 0;
	cmd = syscall_arg0(regs);
	uattr = syscall_arg1(regs);
	switch (cmd) {
	case BPF_MAP_UPDATE_ELEM:
	case BPF_MAP_UPDATE_BATCH:
		op = CAPTURE_OP_UPDATE;
		break;
	case BPF_MAP_DELETE_ELEM:
	case BPF_MAP_DELETE_BATCH:
	case BPF_MAP_LOOKUP_AND_DELETE_ELEM:
	case BPF_MAP_LOOKUP_AND_DELETE_BATCH:
		op = CAPTURE_OP_DELETE;
		break;
	default:
		return 0;
	}
	/* A batch that fails midway still applied its first elements. */
	if (ret && !is_batch(cmd))
		return 0;
	if (own_process())
		return 0;
	map = attr_map(cmd, uattr);
	if (!map)
		return 0;
	id = BPF_CORE_READ(map, id);
	len = watched_len(id);
	if (!len)
		return 0;
	/* Arrays cannot delete; the kernel fails these, this keeps it certain. */
	if (cmd == BPF_MAP_LOOKUP_AND_DELETE_ELEM || cmd == BPF_MAP_LOOKUP_AND_DELETE_BATCH) {
		enum bpf_map_type t = BPF_CORE_READ(map, map_type);

		if (t == BPF_MAP_TYPE_ARRAY || t == BPF_MAP_TYPE_PERCPU_ARRAY)
			return 0;
	}

	/* The values are len bytes each: for a per-CPU map, every CPU's slot. */
	if (is_batch(cmd)) {
		emit_user_batch(0, map, id, len, op, uattr, ret, -1);
		return 0;
	}
	if (bpf_probe_read_user(&attr, sizeof(attr), (void *)uattr)) {
		lost(1);
		return 0;
	}
	emit(0, id, op, BPF_CORE_READ(map, key_size), len, (const void *)attr.key,
	     (const void *)attr.value, true);
	return 0;
}
