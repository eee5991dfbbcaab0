package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// maxAnswer bounds the answer the client reads: thousands of peers and
// maps fit.
const maxAnswer = 16 << 20

// UnreachableError means no daemon answered on the control socket: none
// runs, it listens elsewhere, or the caller may not connect.
type UnreachableError struct {
	Path string
	Err  error
}

func (e *UnreachableError) Error() string {
	if errors.Is(e.Err, syscall.EACCES) || errors.Is(e.Err, syscall.EPERM) {
		return fmt.Sprintf("cannot reach the daemon on %s: %v; the control socket answers root only: run this as root", e.Path, e.Err)
	}
	return fmt.Sprintf("cannot reach the daemon on %s: %v; is udpmapsync running? "+
		"If it was started with --control-socket, give the same path", e.Path, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Query asks the daemon listening on path for its status. An error
// reaching it, or an answer that is not a status document, is an
// [*UnreachableError]; an answer of another schema version or one
// carrying an error is a plain error.
func Query(path string, timeout time.Duration) (*Status, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Err != nil {
			err = op.Err // "dial unix PATH:" again adds nothing
		}
		return nil, &UnreachableError{Path: path, Err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "status\n"); err != nil {
		return nil, &UnreachableError{Path: path, Err: err}
	}
	var st Status
	dec := json.NewDecoder(bufio.NewReader(io.LimitReader(conn, maxAnswer)))
	if err := dec.Decode(&st); err != nil {
		return nil, &UnreachableError{Path: path, Err: fmt.Errorf("no status in the answer: %w", err)}
	}
	if st.Version != Version {
		return nil, fmt.Errorf("the daemon on %s answers with status schema version %d, this command reads version %d: "+
			"use the udpmapsync binary the daemon runs", path, st.Version, Version)
	}
	if st.Error != "" {
		return nil, fmt.Errorf("the daemon on %s: %s", path, st.Error)
	}
	return &st, nil
}
