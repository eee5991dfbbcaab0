package loader

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

const (
	cmdObjGetInfoByFD = 15
	// flagLock is BPF_F_LOCK: the kernel copies the value under its
	// bpf_spin_lock, which the datapath holds while it writes.
	flagLock = 4
)

// mapInfo is the start of struct bpf_map_info, up to the BTF type ids:
// cilium/ebpf's MapInfo does not carry the value's type id.
type mapInfo struct {
	typ, id, keySize, valueSize, maxEntries, flags uint32
	name                                           [16]byte
	ifindex, vmlinuxValueTypeID                    uint32
	netnsDev, netnsIno                             uint64
	btfID, keyTypeID, valueTypeID                  uint32
}

// ValueType returns the BTF type of the map's value; nil, with no error,
// when the map was created without BTF (bpftool, most user-space tools).
func (m *Map) ValueType() (btf.Type, error) {
	var info mapInfo
	attr := struct {
		fd, infoLen uint32
		info        unsafe.Pointer
	}{fd: uint32(m.m.FD()), infoLen: uint32(unsafe.Sizeof(info)), info: unsafe.Pointer(&info)}
	if _, _, errno := unix.Syscall(unix.SYS_BPF, cmdObjGetInfoByFD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)); errno != 0 {
		return nil, fmt.Errorf("map %s: info: %w", m.Name, errno)
	}
	if info.btfID == 0 || info.valueTypeID == 0 {
		return nil, nil
	}
	h, err := btf.NewHandleFromID(btf.ID(info.btfID))
	if err != nil {
		return nil, fmt.Errorf("map %s: open BTF %d: %w", m.Name, info.btfID, permissionError(err))
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, fmt.Errorf("map %s: read BTF %d: %w", m.Name, info.btfID, err)
	}
	t, err := spec.TypeByID(btf.TypeID(info.valueTypeID))
	if errors.Is(err, btf.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("map %s: value type: %w", m.Name, err)
	}
	return t, nil
}

// UseSpinLock makes every later lookup and update of the map take the
// bpf_spin_lock in its value (BPF_F_LOCK, in elem_flags for the batch
// commands), so that user space never reads or writes a value half
// written by a datapath that holds the lock. Call it before the map is
// used, for maps whose value has one (the kernel refuses the flag for
// others).
func (m *Map) UseSpinLock() { m.elemFlags = flagLock }
