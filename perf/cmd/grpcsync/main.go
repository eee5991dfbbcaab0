// Command grpcsync is the gRPC baseline of `make perf`: it replicates one
// BPF map to its peers with gRPC, capturing changes and applying them with
// the same loader code as udpmapsync (see package grpcsync). Every node runs
// it with the others as --peers.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/perf/grpcsync"
)

// Flags are the command line.
type Flags struct {
	Port          uint16
	Peers         []string
	Map           string
	Mode          string
	Capture       string
	RingSize      int
	FlushInterval time.Duration
	BatchBytes    int
	ReadyFile     string
	StartTimeout  time.Duration
}

func main() {
	var f Flags
	fs := pflag.NewFlagSet("grpcsync", pflag.ExitOnError)
	fs.Uint16Var(&f.Port, "port", 3871, "TCP port to serve on and to reach peers at")
	fs.StringSliceVar(&f.Peers, "peers", nil, "the other nodes' addresses (ip,ip,...)")
	fs.StringVar(&f.Map, "map", "", "the map to replicate: a pinned path, name:NAME or id:N (required)")
	fs.StringVar(&f.Mode, "mode", string(grpcsync.Stream), "unary (one call per change) or stream (batches on a bidirectional stream)")
	fs.StringVar(&f.Capture, "capture", string(loader.BackendAuto), "capture backend: auto, fentry or syscall")
	fs.IntVar(&f.RingSize, "ring-size", 16<<20, "capture ring buffer size in bytes, a power of two")
	fs.DurationVar(&f.FlushInterval, "flush-interval", 200*time.Microsecond, "longest a change waits in a stream batch")
	fs.IntVar(&f.BatchBytes, "batch-bytes", 64<<10, "largest stream message")
	fs.StringVar(&f.ReadyFile, "ready-file", "", "written with the pid once every peer is connected")
	fs.DurationVar(&f.StartTimeout, "start-timeout", 30*time.Second, "give up when the peers are not reachable this long")
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, f, log); err != nil {
		fmt.Fprintln(os.Stderr, "grpcsync:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, f Flags, log *slog.Logger) error {
	if f.Map == "" {
		return errors.New("--map is required: the pinned path of the map to replicate")
	}
	maps, err := loader.OpenMaps([]string{f.Map})
	if err != nil {
		return fmt.Errorf("open map: %w", err)
	}
	m := maps[0]
	defer m.Close()

	ln, err := net.Listen("tcp", ":"+strconv.Itoa(int(f.Port)))
	if err != nil {
		return fmt.Errorf("--port %d: %w", f.Port, err)
	}
	srv := grpc.NewServer()
	recv := grpcsync.NewReceiver(m, int(m.KeySize), int(m.ValueSize))
	recv.Register(srv)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer srv.Stop()

	capture, err := loader.NewCapture(loader.CaptureOptions{Backend: loader.Backend(f.Capture), Maps: maps, RingSize: f.RingSize})
	if err != nil {
		return err
	}
	defer capture.Close()

	conns, err := dial(ctx, f)
	for _, c := range conns {
		defer c.Close()
	}
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sender, err := grpcsync.NewSender(sctx, grpcsync.SenderConfig{
		Source: capture, Peers: conns, Mode: grpcsync.Mode(f.Mode),
		FlushInterval: f.FlushInterval, BatchBytes: f.BatchBytes,
	})
	if err != nil {
		return err
	}
	sent := make(chan error, 1)
	go func() { sent <- sender.Run(sctx) }()
	log.Info("replicating", "map", m.Name, "mode", f.Mode, "backend", capture.Backend(), "peers", f.Peers)
	if f.ReadyFile != "" {
		if err := os.WriteFile(f.ReadyFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("--ready-file: %w", err)
		}
	}

	select {
	case <-ctx.Done():
		err = nil
	case err = <-sent:
		err = fmt.Errorf("sender: %w", err)
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	}
	capture.Close() // ends the sender's read
	if ctx.Err() != nil {
		err = errors.Join(err, <-sent)
	}
	err = errors.Join(err, sender.Close())
	log.Info("stats", "sent", sender.Sent.Load(), "applied", recv.Applied.Load())
	return err
}

// dial connects to every peer, waiting until each connection is up: the
// peers start at the same time, so the first attempts may be refused.
func dial(ctx context.Context, f Flags) ([]*grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, f.StartTimeout)
	defer cancel()
	bo := backoff.DefaultConfig
	bo.BaseDelay, bo.MaxDelay = 20*time.Millisecond, 200*time.Millisecond
	var conns []*grpc.ClientConn
	for _, p := range f.Peers {
		addr := net.JoinHostPort(p, strconv.Itoa(int(f.Port)))
		c, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: time.Second}),
			grpcsync.WithRawCodec())
		if err != nil {
			return conns, fmt.Errorf("--peers %s: %w", p, err)
		}
		conns = append(conns, c)
		c.Connect()
		for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
			if !c.WaitForStateChange(ctx, s) {
				return conns, fmt.Errorf("connect to peer %s: %w", addr, ctx.Err())
			}
		}
	}
	return conns, nil
}
