package serve

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// errDraining is the cause a stream's context is cancelled with when the
// drain reaches it; the interceptor turns it into drainStatus.
var errDraining = errors.New("peerd is draining")

// drainStatus is what a client sees when peerd ends its stream on shutdown:
// a clean gRPC status, not a transport error, so ztunnel treats it as a
// server going away and reconnects (to another replica: this one no longer
// accepts connections).
var drainStatus = grpcstatus.New(codes.Unavailable, "peerd is shutting down: reconnect to another replica")

// drainer ends long-lived streams on shutdown. Delta xDS streams never end on
// their own, so grpc.Server.GracefulStop alone would wait forever: after the
// GOAWAY, drain cancels each stream's context at a random moment within the
// drain window, which makes the handler return and the interceptor answer
// with drainStatus. Spreading the ends spreads the reconnects, and with them
// the full initial syncs the remaining replicas must serve.
type drainer struct {
	mu       sync.Mutex
	streams  map[*context.CancelCauseFunc]struct{}
	draining bool
}

func newDrainer() *drainer {
	return &drainer{streams: map[*context.CancelCauseFunc]struct{}{}}
}

// interceptor runs every stream handler with a context the drain can cancel.
func (d *drainer) interceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	if !d.add(&cancel) {
		return drainStatus.Err()
	}
	defer d.remove(&cancel)
	err := handler(srv, &drainStream{ServerStream: ss, ctx: ctx})
	if errors.Is(context.Cause(ctx), errDraining) {
		return drainStatus.Err()
	}
	return err
}

// add registers a stream; it reports false once draining has started (a
// stream opened on a connection that has not seen the GOAWAY yet).
func (d *drainer) add(cancel *context.CancelCauseFunc) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return false
	}
	d.streams[cancel] = struct{}{}
	return true
}

func (d *drainer) remove(cancel *context.CancelCauseFunc) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.streams, cancel)
}

// drain schedules the end of every open stream at a uniformly random moment
// within window (at once when window is 0) and returns how many there were.
func (d *drainer) drain(window time.Duration) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining = true
	for cancel := range d.streams {
		var delay time.Duration
		if window > 0 {
			delay = rand.N(window)
		}
		time.AfterFunc(delay, func() { (*cancel)(errDraining) })
	}
	return len(d.streams)
}

// open is the number of streams not ended yet.
func (d *drainer) open() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.streams)
}

// drainStream gives the handler the drainable context.
type drainStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *drainStream) Context() context.Context { return s.ctx }
