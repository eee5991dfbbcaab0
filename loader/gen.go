package loader

// The two capture backends are separate objects because they are loaded
// separately: a kernel that refuses fentry/fexit programs refuses the whole
// fentry object, and the syscall object must still load there. Their shared
// code lives in bpf/capture.h. Each is built for amd64 and arm64 (the
// *_x86_bpfel and *_arm64_bpfel files, chosen by GOARCH through their build
// tags): the programs read the bpf(2) number and arguments from the
// architecture's syscall registers (bpf/kernel.h).

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -output-stem capture_fentry -type change captureFentry ../bpf/fentry.c -- -I../bpf -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -output-stem capture_syscall -type change captureSyscall ../bpf/syscall.c -- -I../bpf -Wall -Werror

// The counter object adds peers' contributions to merge=sum maps
// (bpf/counter.c); the loader loads one of its programs per such map.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -output-stem counter -type counter_args counter ../bpf/counter.c -- -I../bpf -Wall -Werror
