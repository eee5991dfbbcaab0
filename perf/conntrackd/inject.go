package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ctnetlink constants (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h)
// that golang.org/x/sys/unix does not carry.
const (
	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTNew      = 0
	ctaTupleOrig        = 1
	ctaTupleReply       = 2
	ctaTimeout          = 7
	ctaTupleIP          = 1
	ctaTupleProto       = 2
	ctaIPv4Src          = 1
	ctaIPv4Dst          = 2
	ctaProtoNum         = 1
	ctaProtoSrcPort     = 2
	ctaProtoDstPort     = 3
	nlaFNested          = 0x8000
)

// Sizes of one IPCTNL_MSG_CT_NEW message as [appendEntry] writes it.
const (
	nlmsgHdrLen  = 16
	nfgenmsgLen  = 4
	nlaHdrLen    = 4
	ipNestLen    = nlaHdrLen + 2*(nlaHdrLen+4)                // src, dst
	protoNestLen = nlaHdrLen + 3*(nlaHdrLen+4)                // num (padded), sport, dport
	tupleLen     = nlaHdrLen + ipNestLen + protoNestLen       // one direction
	entryMsgLen  = nlmsgHdrLen + nfgenmsgLen + 2*tupleLen + 8 // both tuples and the timeout
)

// Addresses and ports of the injected UDP flows. Entry i of a range has
// source address base+i; everything else is fixed, so every entry is a
// distinct flow and both directions stay distinct too.
const (
	flowDst     = 0x0ac80001 // 10.200.0.1
	flowSrcPort = 10000
	flowDstPort = 53
	// flowTimeout keeps the entries alive well past the end of a run;
	// they go away with the namespace.
	flowTimeout = 600
)

// Injector creates UDP conntrack entries in the network namespace it was
// opened in, packing many IPCTNL_MSG_CT_NEW requests into each sendmsg:
// ctnetlink handles every message of one datagram in the same syscall,
// which is what makes the injector faster than conntrackd.
type Injector struct {
	fd    int
	batch int
	buf   []byte
	rbuf  []byte

	// Refused counts the entries the kernel rejected (error acks).
	Refused int
	// FirstErr is the first error the kernel returned, nil if none.
	FirstErr error
}

// NewInjector opens a NETLINK_NETFILTER socket in the calling thread's
// network namespace; batch is the number of entries per sendmsg.
func NewInjector(batch int) (*Injector, error) {
	if batch < 1 {
		return nil, fmt.Errorf("create injector: batch %d, want at least 1", batch)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open ctnetlink socket: %w", err)
	}
	in := &Injector{fd: fd, batch: batch, buf: make([]byte, 0, batch*entryMsgLen), rbuf: make([]byte, 1<<16)}
	// Only error acks come back, but a burst of them must not be dropped
	// before they are counted; sendmsg needs room for a whole batch.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set ctnetlink receive buffer: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4*batch*entryMsgLen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("set ctnetlink send buffer: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind ctnetlink socket: %w", err)
	}
	return in, nil
}

// Close closes the socket.
func (in *Injector) Close() error {
	return unix.Close(in.fd)
}

// Inject creates entries base+first .. base+first+n-1 (source addresses
// as big-endian integers). It returns once the kernel has processed every
// request; entries the kernel refused are counted in [Injector.Refused].
func (in *Injector) Inject(base uint32, first, n int) error {
	for done := 0; done < n; {
		k := min(in.batch, n-done)
		in.buf = in.buf[:0]
		for i := range k {
			idx := first + done + i
			in.buf = appendEntry(in.buf, base+uint32(idx), uint32(idx))
		}
		if err := unix.Sendto(in.fd, in.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("send %d ctnetlink requests: %w", k, err)
		}
		done += k
		if err := in.drain(); err != nil {
			return err
		}
	}
	return nil
}

// drain reads the error acks queued so far without waiting.
func (in *Injector) drain() error {
	for {
		n, _, err := unix.Recvfrom(in.fd, in.rbuf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ctnetlink acks: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(in.rbuf[:n])
		if err != nil {
			return fmt.Errorf("parse ctnetlink acks: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				in.Refused++
				if in.FirstErr == nil {
					in.FirstErr = fmt.Errorf("create conntrack entry %d: %w", m.Header.Seq, syscall.Errno(-code))
				}
			}
		}
	}
}

// appendEntry appends one IPCTNL_MSG_CT_NEW request for the UDP flow from
// src to [flowDst]. No NLM_F_ACK: only failures are answered, so the
// kernel spends nothing on acks for the entries it creates.
func appendEntry(b []byte, src, seq uint32) []byte {
	ne := binary.NativeEndian
	be := binary.BigEndian
	b = ne.AppendUint32(b, entryMsgLen)
	b = ne.AppendUint16(b, nfnlSubsysCTNetlink<<8|ipctnlMsgCTNew)
	b = ne.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, unix.AF_INET, unix.NFNETLINK_V0, 0, 0)
	b = appendTuple(b, ctaTupleOrig, src, flowDst, flowSrcPort, flowDstPort)
	b = appendTuple(b, ctaTupleReply, flowDst, src, flowDstPort, flowSrcPort)
	b = appendAttrHdr(b, ctaTimeout, 4)
	return be.AppendUint32(b, flowTimeout)
}

func appendTuple(b []byte, typ uint16, src, dst uint32, sport, dport uint16) []byte {
	be := binary.BigEndian
	b = appendAttrHdr(b, typ|nlaFNested, tupleLen-nlaHdrLen)
	b = appendAttrHdr(b, ctaTupleIP|nlaFNested, ipNestLen-nlaHdrLen)
	b = appendAttrHdr(b, ctaIPv4Src, 4)
	b = be.AppendUint32(b, src)
	b = appendAttrHdr(b, ctaIPv4Dst, 4)
	b = be.AppendUint32(b, dst)
	b = appendAttrHdr(b, ctaTupleProto|nlaFNested, protoNestLen-nlaHdrLen)
	b = appendAttrHdr(b, ctaProtoNum, 1)
	b = append(b, unix.IPPROTO_UDP, 0, 0, 0)
	b = appendAttrHdr(b, ctaProtoSrcPort, 2)
	b = be.AppendUint16(b, sport)
	b = append(b, 0, 0)
	b = appendAttrHdr(b, ctaProtoDstPort, 2)
	b = be.AppendUint16(b, dport)
	return append(b, 0, 0)
}

// appendAttrHdr appends a netlink attribute header for a payload of n
// bytes (the caller pads the payload to 4 bytes).
func appendAttrHdr(b []byte, typ uint16, n int) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(nlaHdrLen+n))
	return binary.NativeEndian.AppendUint16(b, typ)
}
