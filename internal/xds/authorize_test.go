package xds

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

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
