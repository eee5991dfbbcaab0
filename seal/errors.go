package seal

import (
	"errors"
	"fmt"
)

// Errors. Use errors.Is: the errors of [LoadKeyFile] and [NewKeys] wrap
// these in a message that names the file, the line and the fix.
var (
	// ErrKeyFileMode means the key file's mode lets group or others
	// read or write it.
	ErrKeyFileMode = errors.New("seal: key file accessible by group or others")
	// ErrKeyFileOwner means the key file is owned neither by the user
	// the process runs as nor by root.
	ErrKeyFileOwner = errors.New("seal: key file owned by another user")
	// ErrBadKey means a key is not the base64 encoding of [KeySize]
	// bytes.
	ErrBadKey = errors.New("seal: bad key")
	// ErrNoKey means a key file, or a call to [NewKeys], has no key.
	ErrNoKey = errors.New("seal: no key")
	// ErrTooManyKeys means more than [MaxKeys] keys.
	ErrTooManyKeys = errors.New("seal: too many keys")

	// ErrShortBuffer means the datagram passed to [Sealer.Seal] lacks
	// [Overhead] bytes of spare capacity for the trailer.
	ErrShortBuffer = errors.New("seal: no room for the trailer")
	// ErrHeaderLen means a header length outside the datagram.
	ErrHeaderLen = errors.New("seal: header length out of range")
	// ErrCounterExhausted means a [Sealer] has used every counter; it
	// seals nothing more. Start a new run: a new epoch.
	ErrCounterExhausted = errors.New("seal: datagram counter exhausted")
	// ErrUnauthenticated means a datagram did not open: it was short,
	// forged, corrupted, or sealed with a key or for a run that the
	// receiver does not share. Which, it deliberately does not say.
	ErrUnauthenticated = errors.New("seal: datagram not authentic")
)

// wrappedError is an error with a message of its own that still matches
// its sentinel under errors.Is, so that messages read as one sentence
// rather than ending with the sentinel's text.
type wrappedError struct {
	msg string
	err error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.err }

func wrapf(sentinel error, format string, args ...any) error {
	return &wrappedError{msg: fmt.Sprintf(format, args...), err: sentinel}
}
