package netnstest

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// KeyFileName is the key file every daemon started with a log in the same
// directory shares, unless its [DaemonConfig] says otherwise.
const KeyFileName = "cluster.key"

// EnsureKeyFile makes path a key file for --key-file holding a fresh
// random key, as `head -c 32 /dev/urandom | base64` would, mode 0600,
// unless it exists already. Daemons of one cluster start at once, so the
// file appears whole or not at all: it is written aside and linked into
// place, and the first link wins.
func EnsureKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".key-")
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	defer os.Remove(f.Name())
	key := make([]byte, 32)
	rand.Read(key) // never fails (crypto/rand)
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	err = errors.Join(err, f.Chmod(0o600), f.Close())
	if err != nil {
		return fmt.Errorf("key file %s: %w", f.Name(), err)
	}
	if err := os.Link(f.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("key file: %w", err)
	}
	return nil
}
