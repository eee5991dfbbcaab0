package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testKey returns a key whose bytes are all b.
func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func b64(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

// writeKeyFile writes text to a new file in a temporary directory with
// mode perm, whatever the umask, and returns its path.
func writeKeyFile(t *testing.T, text string, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

// sameKeys reports whether a and b hold the same keys in the same order.
func sameKeys(a, b *Keys) bool { return a.n == b.n && a.prk == b.prk }

func TestLoadKeyFile(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	want1, _ := NewKeys(k1)
	want12, _ := NewKeys(k1, k2)
	for _, tc := range []struct {
		name, text string
		want       *Keys
	}{
		{"one key", b64(k1) + "\n", want1},
		{"no final newline", b64(k1), want1},
		{"two keys", b64(k1) + "\n" + b64(k2) + "\n", want12},
		{"comments and blank lines",
			"# sealing key\n\n" + b64(k1) + "\n   \n  # next key, rotating in\n" + b64(k2) + "\n\n", want12},
		{"crlf and indentation", "\t" + b64(k1) + " \r\n" + b64(k2) + "\r\n", want12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := LoadKeyFile(writeKeyFile(t, tc.text, 0o600))
			if err != nil {
				t.Fatal(err)
			}
			if !sameKeys(k, tc.want) {
				t.Errorf("LoadKeyFile(%q) holds other keys than expected", tc.text)
			}
		})
	}
}

func TestLoadKeyFileMode(t *testing.T) {
	text := b64(testKey(1)) + "\n"
	for _, tc := range []struct {
		perm os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o200, true}, // unreadable for a non-root user, but not too open
		{0o640, false},
		{0o604, false},
		{0o660, false},
		{0o620, false},
		{0o602, false},
		{0o644, false},
		{0o666, false},
		{0o700, true},
		{0o610, false},
	} {
		t.Run(tc.perm.String(), func(t *testing.T) {
			if tc.perm&0o400 == 0 && os.Geteuid() != 0 {
				t.Skip("an unreadable file fails to open before its mode is checked")
			}
			path := writeKeyFile(t, text, tc.perm)
			_, err := LoadKeyFile(path)
			if tc.ok {
				if err != nil {
					t.Fatalf("LoadKeyFile with mode %04o: %v", tc.perm, err)
				}
				return
			}
			if !errors.Is(err, ErrKeyFileMode) {
				t.Fatalf("LoadKeyFile with mode %04o: %v, want ErrKeyFileMode", tc.perm, err)
			}
			msg := err.Error()
			for _, want := range []string{path, fmtMode(tc.perm), "chmod 600 " + path} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
		})
	}
}

func fmtMode(m os.FileMode) string {
	const digits = "01234567"
	return string([]byte{'0', digits[m>>6&7], digits[m>>3&7], digits[m&7]})
}

func TestLoadKeyFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	path := writeKeyFile(t, b64(testKey(1))+"\n", 0o600)
	// Root may use a file it owns.
	if _, err := LoadKeyFile(path); err != nil {
		t.Fatal(err)
	}
	// ... and root's files are fine for anyone; another user's are not.
	if err := os.Chown(path, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKeyFile(path)
	if !errors.Is(err, ErrKeyFileOwner) {
		t.Fatalf("LoadKeyFile of a file owned by uid 12345: %v, want ErrKeyFileOwner", err)
	}
	for _, want := range []string{path, "12345", "chown 0 " + path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestLoadKeyFileBad(t *testing.T) {
	short := b64(testKey(3)[:16])
	long := b64(bytes.Repeat([]byte{4}, 33))
	for _, tc := range []struct {
		name, text string
		want       error
		line       string // the line the error must name
		secret     string // what the error must not quote
	}{
		{"empty", "", ErrNoKey, "", ""},
		{"only comments", "# no key yet\n\n#\n", ErrNoKey, "", ""},
		{"short key", "# c\n" + short + "\n", ErrBadKey, "line 2", short},
		{"long key", long + "\n", ErrBadKey, "line 1", long},
		{"very long line", strings.Repeat("A", 400) + "\n", ErrBadKey, "line 1", strings.Repeat("A", 400)},
		{"not base64", b64(testKey(1)) + "\n\n" + "sEcReT!!" + b64(testKey(1))[8:] + "\n", ErrBadKey, "line 3", "sEcReT"},
		{"raw key bytes", string(testKey('k')) + "\n", ErrBadKey, "line 1", string(testKey('k'))},
		{"unpadded", strings.TrimRight(b64(testKey(5)), "=") + "\n", ErrBadKey, "line 1", ""},
		{"inline comment", b64(testKey(5)) + " # mine\n", ErrBadKey, "line 1", b64(testKey(5))},
		{"three keys", b64(testKey(1)) + "\n" + b64(testKey(2)) + "\n# x\n" + b64(testKey(3)) + "\n", ErrTooManyKeys, "line 4", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyFile(t, tc.text, 0o600)
			k, err := LoadKeyFile(path)
			if !errors.Is(err, tc.want) {
				t.Fatalf("LoadKeyFile(%q) = %v, %v; want %v", tc.text, k, err, tc.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file", msg)
			}
			if tc.line != "" && !strings.Contains(msg, tc.line+":") {
				t.Errorf("error %q does not say %q", msg, tc.line)
			}
			if tc.secret != "" && strings.Contains(msg, tc.secret) {
				t.Errorf("error %q quotes the file", msg)
			}
		})
	}
}

func TestLoadKeyFileNotAFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := LoadKeyFile(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadKeyFile of a missing file: %v", err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(sub); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("LoadKeyFile of a directory: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	done := make(chan error, 1)
	go func() { _, err := LoadKeyFile(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("LoadKeyFile of a FIFO: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("LoadKeyFile of a FIFO blocks")
	}
}

func TestLoadKeyFileSymlink(t *testing.T) {
	// Secrets are often mounted as symlinks to the real file, whose mode
	// is what counts.
	path := writeKeyFile(t, b64(testKey(1))+"\n", 0o600)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(link); err != nil {
		t.Errorf("LoadKeyFile through a symlink: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(link); !errors.Is(err, ErrKeyFileMode) {
		t.Errorf("LoadKeyFile through a symlink to a mode 0644 file: %v, want ErrKeyFileMode", err)
	}
}

func TestNewKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys [][]byte
		want error
	}{
		{"none", nil, ErrNoKey},
		{"three", [][]byte{testKey(1), testKey(2), testKey(3)}, ErrTooManyKeys},
		{"short", [][]byte{testKey(1), testKey(2)[:31]}, ErrBadKey},
		{"long", [][]byte{append(testKey(1), 0)}, ErrBadKey},
	} {
		if _, err := NewKeys(tc.keys...); !errors.Is(err, tc.want) {
			t.Errorf("NewKeys(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
	k, err := NewKeys(testKey(1), testKey(2))
	if err != nil || k.Len() != 2 {
		t.Fatalf("NewKeys of two keys = %v, %v", k, err)
	}
	if k, _ := NewKeys(testKey(1)); k.Len() != 1 {
		t.Errorf("Len of one key = %d", k.Len())
	}
}
