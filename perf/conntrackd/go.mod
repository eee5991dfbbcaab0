module github.com/udpmapsync/udpmapsync/perf/conntrackd

go 1.26.8

require (
	github.com/spf13/pflag v1.0.10
	github.com/udpmapsync/udpmapsync v0.0.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/net v0.62.0 // indirect
)

replace github.com/udpmapsync/udpmapsync => ../..
