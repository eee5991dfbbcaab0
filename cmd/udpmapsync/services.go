package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/control"
	"github.com/udpmapsync/udpmapsync/metrics"
)

// services are the daemon's listeners besides replication: the control
// socket (--control-socket) and the metrics port (--metrics-addr), each
// off when its flag is empty.
type services struct {
	control *control.Server
	metrics net.Listener
	http    *http.Server
	wg      sync.WaitGroup
}

// listen claims the control socket and the metrics port.
func listen(f *Flags, log *slog.Logger) (_ *services, err error) {
	s := &services{}
	if f.ControlSocket != "" {
		if s.control, err = control.Listen(f.ControlSocket, log); err != nil {
			return nil, fmt.Errorf("--control-socket: %w", err)
		}
	}
	if f.MetricsAddr != "" {
		if s.metrics, err = net.Listen("tcp", f.MetricsAddr); err != nil {
			s.stop()
			return nil, fmt.Errorf("--metrics-addr %s: %w", f.MetricsAddr, err)
		}
	}
	return s, nil
}

// serve answers status requests and scrapes from d until stop. The
// channel receives the error of a listener that failed.
func (s *services) serve(ctx context.Context, d *daemon, log *slog.Logger) <-chan error {
	failed := make(chan error, 2)
	if s.control != nil {
		s.wg.Go(func() {
			if err := s.control.Serve(ctx, d); err != nil {
				failed <- err
			}
		})
		log.Info("control socket listening", "path", s.control.Path())
	}
	if s.metrics != nil {
		reg := metrics.Registry(d, metrics.BuildInfo{Version: version, Backend: d.backend()})
		s.http = &http.Server{Handler: metrics.Handler(reg, d.node.Ready()), ReadHeaderTimeout: 10 * time.Second}
		s.wg.Go(func() {
			if err := s.http.Serve(s.metrics); !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("--metrics-addr %s: %w", s.metrics.Addr(), err)
			}
		})
		log.Info("serving metrics", "addr", s.metrics.Addr().String(), "paths", "/metrics /healthz /readyz")
	}
	return failed
}

// stop closes the listeners (removing the control socket) and returns
// once no request is being answered any more, so the maps can be closed.
func (s *services) stop() {
	if s.control != nil {
		s.control.Close()
	}
	if s.http != nil {
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if s.http.Shutdown(shut) != nil {
			s.http.Close()
		}
	} else if s.metrics != nil {
		s.metrics.Close()
	}
	s.wg.Wait()
}
