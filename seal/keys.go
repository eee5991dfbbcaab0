package seal

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"syscall"
)

// KeySize is the size of a pre-shared key in bytes.
const KeySize = 32

// MaxKeys is how many keys a [Keys] holds at most: the sealing key and
// one being rotated in or out.
const MaxKeys = 2

// maxKeyFileSize bounds what LoadKeyFile reads: a key file is a few lines.
const maxKeyFileSize = 64 << 10

// Keys holds the pre-shared keys of a node: the first seals what the node
// sends, and every key opens what it receives. A Keys is immutable and safe
// for concurrent use.
type Keys struct {
	// prk holds HKDF-Extract(salt = none, key) of each key: the half of
	// the subkey derivation that does not depend on the run, done once.
	prk [MaxKeys][sha256.Size]byte
	n   int
}

// NewKeys returns the Keys made of keys, each [KeySize] bytes: the first
// seals, all of them open. It is for callers that hold keys in memory; a
// daemon reads them with [LoadKeyFile]. It returns [ErrNoKey],
// [ErrTooManyKeys] or [ErrBadKey].
func NewKeys(keys ...[]byte) (*Keys, error) {
	switch {
	case len(keys) == 0:
		return nil, wrapf(ErrNoKey, "new keys: no key given")
	case len(keys) > MaxKeys:
		return nil, wrapf(ErrTooManyKeys, "new keys: %d keys given, at most %d", len(keys), MaxKeys)
	}
	k := &Keys{}
	for i, key := range keys {
		if len(key) != KeySize {
			return nil, wrapf(ErrBadKey, "new keys: key %d is %d bytes, want %d", i+1, len(key), KeySize)
		}
		k.add(key)
	}
	return k, nil
}

// Len returns the number of keys, 1 or 2. Two means a rotation is under
// way (see the package documentation).
func (k *Keys) Len() int { return k.n }

func (k *Keys) add(key []byte) {
	prk, err := hkdf.Extract(sha256.New, key, nil)
	if err != nil {
		// Extract fails only for a hash the FIPS module refuses, and
		// SHA-256 is not one.
		panic("seal: hkdf extract: " + err.Error())
	}
	copy(k.prk[k.n][:], prk)
	k.n++
}

// LoadKeyFile reads the keys in the file at path. The file holds one or two
// keys, each the standard base64 encoding of [KeySize] bytes on a line of
// its own, as
//
//	head -c 32 /dev/urandom | base64
//
// writes it; blank lines and lines starting with # are ignored. The first
// key seals, every key opens.
//
// The file must be a regular file that neither group nor others may read or
// write, owned by the user the process runs as or by root. LoadKeyFile
// refuses anything else, and a file without a key, with more than two, or
// with a line that is not a key, with an error that names the file, the
// line and the fix, and wraps [ErrKeyFileMode], [ErrKeyFileOwner],
// [ErrNoKey], [ErrTooManyKeys] or [ErrBadKey]. Errors never quote the
// file's contents.
func LoadKeyFile(path string) (*Keys, error) {
	// O_NONBLOCK so that a FIFO put in the key's place fails the checks
	// below instead of blocking the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("load key file: %w", err)
	}
	defer f.Close()
	// Check the opened file, not the path, so that the file read is
	// the file checked.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("load key file %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, wrapf(ErrKeyFileMode,
			"load key file %s: mode %04o lets group or others read or write it; run chmod 600 %s",
			path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if euid := os.Geteuid(); int(st.Uid) != euid && st.Uid != 0 {
			return nil, wrapf(ErrKeyFileOwner,
				"load key file %s: owned by uid %d, but this process runs as uid %d; run chown %d %s, or chown root",
				path, st.Uid, euid, euid, path)
		}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("load key file %s: larger than %d bytes, not a key file", path, maxKeyFileSize)
	}
	k, err := parseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	return k, nil
}

// parseKeys parses the contents of a key file. Its errors name the line
// but never quote it: the line may hold a key.
func parseKeys(data []byte) (*Keys, error) {
	k := &Keys{}
	var key [KeySize]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 256), maxKeyFileSize)
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		if k.n == MaxKeys {
			return nil, wrapf(ErrTooManyKeys,
				"line %d: a third key; a key file holds the sealing key and at most one more, for rotation", line)
		}
		// DecodedLen bounds what Decode may write; anything longer
		// than a key's encoding is not a key.
		if base64.StdEncoding.DecodedLen(len(text)) > KeySize+2 {
			return nil, wrapf(ErrBadKey, "line %d: %d characters, want the %d of a base64 %d-byte key",
				line, len(text), base64.StdEncoding.EncodedLen(KeySize), KeySize)
		}
		var buf [KeySize + 2]byte
		n, err := base64.StdEncoding.Decode(buf[:], text)
		if err != nil {
			return nil, wrapf(ErrBadKey, "line %d: not base64: %v", line, err)
		}
		if n != KeySize {
			return nil, wrapf(ErrBadKey, "line %d: decodes to %d bytes, want %d", line, n, KeySize)
		}
		copy(key[:], buf[:n])
		k.add(key[:])
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if k.n == 0 {
		return nil, wrapf(ErrNoKey, "no key: want a line with a base64 %d-byte key (head -c %d /dev/urandom | base64)",
			KeySize, KeySize)
	}
	return k, nil
}
