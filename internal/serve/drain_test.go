package serve

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// fakeServerStream carries only a context, which is all the interceptor
// and the handlers below use.
type fakeServerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeServerStream) Context() context.Context { return s.ctx }

// TestDrainerEndsStreamsWithUnavailable: a handler that runs until its
// context ends (as delta xDS handlers do) is ended by the drain with a clean
// UNAVAILABLE status; other errors pass through; a stream that starts during
// the drain is refused the same way.
func TestDrainerEndsStreamsWithUnavailable(t *testing.T) {
	d := newDrainer()
	untilCancelled := func(_ any, ss grpc.ServerStream) error { <-ss.Context().Done(); return nil }
	failing := errors.New("handler failed")

	results := make(chan error, 2)
	started := make(chan struct{}, 2)
	for _, h := range []grpc.StreamHandler{untilCancelled, untilCancelled} {
		go func() {
			results <- d.interceptor(nil, fakeServerStream{ctx: context.Background()}, nil, func(srv any, ss grpc.ServerStream) error {
				started <- struct{}{}
				return h(srv, ss)
			})
		}()
	}
	<-started
	<-started
	if err := d.interceptor(nil, fakeServerStream{ctx: context.Background()}, nil, func(any, grpc.ServerStream) error { return failing }); !errors.Is(err, failing) {
		t.Errorf("a handler's own error became %v", err)
	}

	if n := d.drain(10 * time.Millisecond); n != 2 {
		t.Errorf("drain saw %d open streams, want 2", n)
	}
	for range 2 {
		select {
		case err := <-results:
			if st := grpcstatus.Convert(err); st.Code() != codes.Unavailable || st.Message() != drainStatus.Message() {
				t.Errorf("drained stream ended with %v, want %v", err, drainStatus.Err())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a stream was not ended by the drain")
		}
	}
	if n := d.open(); n != 0 {
		t.Errorf("%d streams still registered after they ended", n)
	}
	late := d.interceptor(nil, fakeServerStream{ctx: context.Background()}, nil, func(any, grpc.ServerStream) error {
		t.Error("a stream opened during the drain ran its handler")
		return nil
	})
	if grpcstatus.Code(late) != codes.Unavailable {
		t.Errorf("a stream opened during the drain got %v, want UNAVAILABLE", late)
	}
}
