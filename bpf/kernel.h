/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kernel.h: the few kernel types and constants the capture programs use,
 * instead of a generated vmlinux.h of several megabytes.
 *
 * The first part is user-space ABI (stable numbers and layouts). The second
 * part is kernel-internal structures: they carry preserve_access_index, so
 * every field access is a CO-RE relocation resolved against the running
 * kernel's BTF at load time, and only the members named here must exist.
 */
#pragma once

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
/* bpf_helper_defs.h names these. */
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* Syscall number of bpf(2), per architecture (loader/gen.go builds both). */
#if defined(__TARGET_ARCH_x86)
#define NR_BPF 321
#elif defined(__TARGET_ARCH_arm64)
#define NR_BPF 280
#else
#error "unsupported architecture: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64 (bpf2go -target)"
#endif

/* bpf(2) commands (enum bpf_cmd). */
#define BPF_MAP_UPDATE_ELEM 2
#define BPF_MAP_DELETE_ELEM 3
#define BPF_MAP_LOOKUP_AND_DELETE_ELEM 21
#define BPF_MAP_LOOKUP_AND_DELETE_BATCH 25
#define BPF_MAP_UPDATE_BATCH 26
#define BPF_MAP_DELETE_BATCH 27

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

/* Map flag that local storage maps require. */
#define BPF_F_NO_PREALLOC 1

/* Map flag of an array user space maps into its memory. */
#define BPF_F_MMAPABLE (1U << 10)

/* Flag of bpf_task_storage_get: create the task's element if missing. */
#define BPF_LOCAL_STORAGE_GET_F_CREATE 1

/* Ring buffer flags of bpf_ringbuf_output and bpf_ringbuf_query. */
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_RB_AVAIL_DATA 0

/* Error numbers the batch commands can return. */
#define EPERM 1
#define EBADF 9
#define EFAULT 14
#define EINVAL 22
#define EOPNOTSUPP 95
#define ENOTSUPP 524

/* The single-element commands' part of union bpf_attr. */
struct bpf_attr_elem {
	__u32 map_fd;
	__u32 pad;
	__u64 key;
	__u64 value;
};

/* The batch commands' part of union bpf_attr (attr.batch). */
struct bpf_attr_batch {
	__u64 in_batch;
	__u64 out_batch;
	__u64 keys;
	__u64 values;
	__u32 count;
	__u32 map_fd;
};

struct bpf_pidns_info {
	__u32 pid;
	__u32 tgid;
};

/* Kernel internals, relocated with CO-RE. */

struct bpf_map {
	__u32 key_size;
	__u32 value_size;
	enum bpf_map_type map_type;
	__u32 id;
} __attribute__((preserve_access_index));

/*
 * A task's user registers, and the number and first two arguments of the
 * system call it entered with, read the same way from the sys_exit
 * tracepoint (the call is returning) and from inside the call.
 */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

static inline __attribute__((always_inline)) long syscall_nr(struct pt_regs *regs) { return regs->orig_ax; }
static inline __attribute__((always_inline)) __u64 syscall_arg0(struct pt_regs *regs) { return regs->di; }
static inline __attribute__((always_inline)) __u64 syscall_arg1(struct pt_regs *regs) { return regs->si; }
#elif defined(__TARGET_ARCH_arm64)
/*
 * The kernel's regs[] sits in an anonymous struct of an anonymous union;
 * CO-RE finds members through anonymous ones. x0 is both the first
 * argument and the return value: by sys_exit regs[0] holds the return
 * value, and orig_x0 keeps the argument.
 */
struct pt_regs {
	__u64 regs[31];
	__u64 orig_x0;
	__s32 syscallno;
} __attribute__((preserve_access_index));

static inline __attribute__((always_inline)) long syscall_nr(struct pt_regs *regs) { return regs->syscallno; }
static inline __attribute__((always_inline)) __u64 syscall_arg0(struct pt_regs *regs) { return regs->orig_x0; }
static inline __attribute__((always_inline)) __u64 syscall_arg1(struct pt_regs *regs) { return regs->regs[1]; }
#endif

struct file {
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	void *stack;
	struct files_struct *files;
} __attribute__((preserve_access_index));
