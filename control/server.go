package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/replication"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/udpmapsync/udpmapsync.sock"

// requestTimeout bounds one request, from accept to the answer written.
const requestTimeout = 5 * time.Second

// Source is what a status answer is made of; the server reads it at each
// request.
type Source interface {
	// Daemon describes the daemon; the server sets its Time.
	Daemon() Daemon
	Status() replication.Status
	Stats() replication.StatsSnapshot
	// Maps are the replicated maps with their entry counts.
	Maps() []Map
	Capture() Capture
}

// Snapshot makes the answer to a status request from src, at now.
func Snapshot(src Source, now time.Time) *Status {
	st := src.Status()
	stats := src.Stats()
	d := src.Daemon()
	d.Time = now
	out := &Status{Version: Version, Daemon: d, Ready: st.Ready, Maps: src.Maps(), Peers: []Peer{},
		Capture: src.Capture(), Totals: map[string]uint64{}}
	if out.Maps == nil {
		out.Maps = []Map{}
	}
	for _, p := range st.Peers {
		peer := Peer{Node: p.Node, Addr: p.Addr.String(), Epoch: p.Epoch, Ready: p.Ready, LastSeq: p.Seq,
			Applied: p.Applied, Lag: p.Lag(), LagSeconds: seconds(now, p.MissingSince), LastHeard: p.LastHeard,
			SilentSeconds: seconds(now, p.LastHeard), Datagrams: p.Datagrams, Gaps: p.Gaps, Resyncs: p.Resyncs,
			ResyncOwed: p.ResyncOwed, Mismatches: p.Mismatches}
		if p.Seq > 0 {
			peer.Loss = float64(p.Gaps) / float64(p.Seq)
		}
		out.Peers = append(out.Peers, peer)
	}
	if r := st.Resync; r != nil {
		rs := &Resync{Peer: r.Peer, State: "requested", Since: r.Since, ElapsedSeconds: seconds(now, r.Since),
			Entries: r.Entries, Datagrams: r.Datagrams}
		if r.Streaming {
			rs.State = "streaming"
		}
		if rs.ElapsedSeconds > 0 {
			rs.Rate = float64(r.Entries) / rs.ElapsedSeconds
		}
		out.Resync = rs
	}
	for i := range replication.Counters {
		c := &replication.Counters[i]
		out.Totals[c.Name] = c.Of(&stats)
	}
	return out
}

func seconds(now, t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return max(now.Sub(t).Seconds(), 0)
}

// Server is the daemon's end of the control socket.
type Server struct {
	ln   *net.UnixListener
	path string
	log  *slog.Logger

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Listen creates the control socket at path: its directory, if missing,
// with mode 0700, and the socket with mode 0600, so only root can connect
// (and the server answers root only). A socket file nobody listens on is
// left over from a daemon that did not exit cleanly, and is replaced; one
// another daemon listens on is an error, as is a file that is not a
// socket.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if path == "" {
		return nil, errors.New("control socket: no path")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := clearStale(path, log); err != nil {
		return nil, err
	}
	// The socket is created with the process's umask: make it 0600 from
	// the start rather than chmod it after others could connect.
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("control socket %s: another daemon took it meanwhile: %w", path, err)
	} else if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &Server{ln: ln, path: path, log: log}, nil
}

// ErrInUse means another daemon listens on the control socket.
var ErrInUse = errors.New("another daemon is listening on the control socket")

// clearStale removes a socket at path that nobody listens on.
func clearStale(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("control socket %s exists and is not a socket (%s); remove it, or give another path with --control-socket", path, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		who := ""
		if cred, err := peerCred(conn.(*net.UnixConn)); err == nil {
			who = fmt.Sprintf(" (pid %d)", cred.Pid)
		}
		conn.Close()
		return fmt.Errorf("control socket %s: %w%s; stop it, or give this daemon another --control-socket", path, ErrInUse, who)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control socket %s: cannot tell whether a daemon listens on it: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("control socket %s: remove the stale socket: %w", path, err)
	}
	log.Info("removed a stale control socket", "path", path)
	return nil
}

// Path is where the server listens.
func (s *Server) Path() string { return s.path }

// Serve answers requests from src until ctx is done or the server is
// closed, then closes it (removing the socket) and returns once every
// request in progress has been answered.
func (s *Server) Serve(ctx context.Context, src Source) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.wg.Wait()
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.Close()
			return fmt.Errorf("control socket %s: %w", s.path, err)
		}
		s.wg.Go(func() { s.answer(conn, src) })
	}
}

// Close stops listening and removes the socket.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.ln.Close() })
	return err
}

// answer reads one request from conn and answers it.
func (s *Server) answer(conn *net.UnixConn, src Source) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	reply := func(st *Status) {
		b, _ := json.Marshal(st)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			s.log.Debug("control socket: answer not delivered", "error", err)
		}
	}
	// The socket's mode already keeps others out; this holds also where
	// the directory or the mode was changed by hand.
	if cred, err := peerCred(conn); err != nil || cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		reply(&Status{Version: Version, Error: "permission denied: the control socket answers root only"})
		return
	}
	line, err := bufio.NewReader(&limited{conn, 256}).ReadString('\n')
	if err != nil {
		reply(&Status{Version: Version, Error: "no request: send one line, \"status\""})
		return
	}
	switch req := strings.TrimSpace(line); req {
	case "status":
		reply(Snapshot(src, time.Now()))
	default:
		reply(&Status{Version: Version, Error: fmt.Sprintf("unknown request %.40q: the daemon knows \"status\"", req)})
	}
}

// limited reads at most n bytes from a connection.
type limited struct {
	c net.Conn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request too long")
	}
	k, err := l.c.Read(p[:min(len(p), l.n)])
	l.n -= k
	return k, err
}

// peerCred is the process at the other end of conn.
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}
