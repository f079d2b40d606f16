package xds

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestAuthorizeRefusesAType: the hook is asked once per stream and type;
// a refusal ends the stream with PermissionDenied naming the type and the
// reason, logged and counted with the Denial's labels.
func TestAuthorizeRefusesAType(t *testing.T) {
	var mu sync.Mutex
	asked := map[string]int{}
	withPeer := true
	e := newEnvOptions(t, ServerOptions{Authorize: func(ctx context.Context, typeURL string) error {
		mu.Lock()
		defer mu.Unlock()
		asked[typeURL]++
		if _, ok := peer.FromContext(ctx); !ok {
			withPeer = false
		}
		switch typeURL {
		case AuthorizationTypeURL:
			return &Denial{Identity: "anonymous", Reason: "no_client_certificate", Message: "not for you"}
		case "type.googleapis.com/unknown":
			t.Error("the hook was asked about a type the server does not serve")
		}
		return nil
	}})
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1")})

	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	m := r.recv()
	if len(m.GetResources()) != 1 {
		t.Fatalf("allowed type: %d resources, want 1", len(m.GetResources()))
	}
	r.ack(m)
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"*"}})
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/unknown"})
	if m := r.recv(); m.GetTypeUrl() != "type.googleapis.com/unknown" {
		t.Fatalf("unknown type answered with %v", m)
	}
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AuthorizationTypeURL})
	err := r.ended()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), AuthorizationTypeURL+": not for you") {
		t.Fatalf("stream ended with %v, want PermissionDenied naming the type and the reason", err)
	}
	mu.Lock()
	if asked[AddressTypeURL] != 1 || asked[AuthorizationTypeURL] != 1 || !withPeer {
		t.Errorf("hook asked %v (peer in context: %v), want once per type with the stream's context", asked, withPeer)
	}
	mu.Unlock()
	if got := testutil.ToFloat64(e.srv.metrics.denied.WithLabelValues("istio.security.Authorization", "anonymous", "no_client_certificate")); got != 1 {
		t.Errorf("peerd_xds_requests_denied_total = %v, want 1", got)
	}
	if n := e.logs.FilterMessage("refused a type to the client; closing the stream").FilterField(
		zap.String("reason", "no_client_certificate")).Len(); n != 1 {
		t.Errorf("logged %d refusals with the reason, want 1", n)
	}
}

func TestAuthorizePlainErrorIsLabelledOther(t *testing.T) {
	e := newEnvOptions(t, ServerOptions{Authorize: func(context.Context, string) error { return errors.New("closed for maintenance") }})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	if err := r.ended(); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "closed for maintenance") {
		t.Fatalf("stream ended with %v", err)
	}
	if got := testutil.ToFloat64(e.srv.metrics.denied.WithLabelValues("istio.workload.Address", "other", "other")); got != 1 {
		t.Errorf("denied{identity=other,reason=other} = %v, want 1", got)
	}
}

// TestAuthorizeDenialCodeAndQuietLog: a Denial's code is the stream's status
// (a token check says Unauthenticated, not PermissionDenied), every refusal
// is counted, and repeated refusals with the same labels are logged once per
// DenialLogInterval, the next log saying how many were not.
func TestAuthorizeDenialCodeAndQuietLog(t *testing.T) {
	e := newEnvOptions(t, ServerOptions{
		Limits: Limits{DenialLogInterval: time.Hour},
		Authorize: func(context.Context, string) error {
			return &Denial{Identity: "anonymous", Reason: "no_token", Message: "send a token", Code: codes.Unauthenticated}
		},
	})
	for i := range 3 {
		r := e.raw()
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
		if err := r.ended(); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "send a token") {
			t.Fatalf("stream %d ended with %v, want Unauthenticated with the message", i, err)
		}
	}
	if got := testutil.ToFloat64(e.srv.metrics.denied.WithLabelValues("istio.workload.Address", "anonymous", "no_token")); got != 3 {
		t.Errorf("denied{reason=no_token} = %v, want 3", got)
	}
	if n := e.logs.FilterMessage("refused a type to the client; closing the stream").Len(); n != 1 {
		t.Errorf("logged %d refusals within one DenialLogInterval, want 1", n)
	}
}

func TestDenialLimiterReportsSuppressed(t *testing.T) {
	var l denialLimiter
	t0 := time.Unix(0, 0)
	steps := []struct {
		key       string
		at        time.Duration
		wantLog   bool
		wantCount int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", time.Second, true, 0}, // another key has its own interval
		{"a", 2 * time.Second, false, 0},
		{"a", 10 * time.Second, true, 2},
		{"a", 11 * time.Second, false, 0},
	}
	for i, s := range steps {
		log, n := l.allow(s.key, t0.Add(s.at), 10*time.Second)
		if log != s.wantLog || n != s.wantCount {
			t.Errorf("step %d (%s at %v): allow = %v, %d; want %v, %d", i, s.key, s.at, log, n, s.wantLog, s.wantCount)
		}
	}
}
