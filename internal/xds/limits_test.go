package xds

import (
	"strings"
	"sync/atomic"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// wantClosed checks that r ended with code and a message containing text,
// and that the limit was counted.
func (e *env) wantClosed(r *raw, code codes.Code, text, limit string) {
	e.t.Helper()
	err := r.ended()
	if status.Code(err) != code || !strings.Contains(err.Error(), text) {
		e.t.Fatalf("stream ended with %v; want %s mentioning %q", err, code, text)
	}
	if n := testutil.ToFloat64(e.srv.metrics.closed.WithLabelValues(limit)); n != 1 {
		e.t.Errorf("streams closed for %q = %v, want 1", limit, n)
	}
}

// A client that floods requests while not reading what it is sent gets its
// stream closed once the queue is full; other clients keep their updates.
func TestFloodWithoutReadingClosesOnlyThatStream(t *testing.T) {
	e := newEnvWith(t, Limits{MaxQueuedRequests: 8})
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1")})
	good := e.client(ztunnel.Config{})
	e.wait(good, "initial sync", func(s *ztunnel.State) bool { return s.Ready })

	// The flooder's stream goroutine blocks in its first send, as it would
	// writing to a client whose receive window is full.
	var hold atomic.Bool
	hold.Store(true)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e.srv.onSend = func(resp *discovery.DeltaDiscoveryResponse, _ []byte) {
		if hold.CompareAndSwap(true, false) {
			<-release
		}
	}
	flooder := e.raw()
	flooder.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	for i := 0; i < 100; i++ {
		if err := flooder.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"x"}}); err != nil {
			break // the server closed the stream
		}
	}
	e.wantClosed(flooder, codes.ResourceExhausted, "requests queued", "queue")

	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1"), workload("c//Pod/default/b", "10.0.0.2")})
	e.wait(good, "an update after the flooder was closed", func(s *ztunnel.State) bool { return s.Workloads["c//Pod/default/b"] != nil })
}

func TestTooManyNamesClosesTheStream(t *testing.T) {
	e := newEnvWith(t, Limits{MaxNames: 5})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"*"}, ResourceNamesUnsubscribe: []string{"*"}})
	r.ack(r.recv())
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"/1", "/2", "/3", "/4", "/5", "/6"}})
	e.wantClosed(r, codes.ResourceExhausted, "at most 5", "names")
}

func TestOverlongNameClosesTheStream(t *testing.T) {
	e := newEnvWith(t, Limits{MaxNameLength: 64})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{strings.Repeat("n", 65)}})
	e.wantClosed(r, codes.InvalidArgument, "at most 64 bytes", "name_length")
}

// Every response gets one reply; a storm of ACKs or NACKs (100,000 NACKs
// once cost 8.8 CPU-s and 192 MB of logs) ends the stream early.
func TestReplyStormClosesTheStream(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	m := r.recv()
	for i := 0; i < 1000; i++ {
		if err := r.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResponseNonce: m.GetNonce(),
			ErrorDetail: &rpcstatus.Status{Message: "x: bad"}}); err != nil {
			break
		}
	}
	e.wantClosed(r, codes.InvalidArgument, "more ACKs/NACKs than responses", "replies")
	if n := e.logs.FilterMessageSnippet("NACK").Len(); n != 1 {
		t.Errorf("NACK log lines = %d, want 1 (rate-limited per stream)", n)
	}
}

// Unknown type URLs are counted under one series (a label per client value
// would let a client grow /metrics without bound) and bounded per stream.
func TestUnknownTypesCountedWithoutLabelAndBounded(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	for i := 0; i < maxUnknownTypes+1; i++ {
		if err := r.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/x" + strings.Repeat("y", i)}); err != nil {
			break
		}
	}
	e.wantClosed(r, codes.InvalidArgument, "type URLs this server does not serve", "unknown_types")
	if n := testutil.ToFloat64(e.srv.metrics.unknown); n != maxUnknownTypes {
		t.Errorf("unknown type requests = %v, want %d", n, maxUnknownTypes)
	}
}
