package loader

// The two capture backends are separate objects because they are loaded
// separately: a kernel that refuses fentry/fexit programs refuses the whole
// fentry object, and the syscall object must still load there. Their shared
// code lives in bpf/capture.h. Only amd64 is built: the syscall backend
// decodes x86_64 syscall registers (orig_ax, di, si) and the bpf(2) number.

//go:generate go tool bpf2go -tags linux -target amd64 -output-stem capture_fentry -type change captureFentry ../bpf/fentry.c -- -I../bpf -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64 -output-stem capture_syscall -type change captureSyscall ../bpf/syscall.c -- -I../bpf -Wall -Werror
