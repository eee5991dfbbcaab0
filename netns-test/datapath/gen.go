// Package datapath is a conntrack-like datapath for the in-place tests:
// BPF programs that write map values in place, through the pointer
// bpf_map_lookup_elem returns, as Cilium's and LoxiLB's do, run with
// BPF_PROG_TEST_RUN; and the maps they write, with BTF. See datapath.c.
package datapath

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -output-stem datapath -type ct_entry -type locked_entry -type args datapath datapath.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
